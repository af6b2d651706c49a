package core

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var (
	stressSeed   = flag.Uint64("stress.seed", 0, "TestQueueRandomizedStress: the seed of the first round (0: from the clock); with -stress.rounds=1, replays one round")
	stressRounds = flag.Int("stress.rounds", 0, "TestQueueRandomizedStress: how many rounds (0: the default)")
)

const (
	stressDeadline = 10 * time.Second // per round; a round normally takes milliseconds
	stressMaxItems = 300              // per producer
)

// What became of an item: each one pushed must end up in exactly one of these, once.
const (
	fateConsumed = iota // taken by a consumer (and not given back)
	fateParked          // not put in: a push's stop channel ended (Park)
	fateEvicted         // dead-lettered: a new item (OverflowDeadLetter) or an old queued one (OverflowDropOldest)
	fateKept            // not taken: Offer returned Full or Stopped, the caller still owns it
	fateKinds
)

var fateNames = [fateKinds]string{"consumed", "parked", "evicted", "kept"}

var overflowNames = []string{"block", "reject", "drop-oldest", "dead-letter"}

type stressProducer struct {
	First, Items int
	PPush        float64    // a Push (of 1..MaxBatch items, under the queue's Policy) rather than an Offer
	MaxBatch     int        // 1..8
	Policies     []Overflow // of its Offers
	PStop        float64    // a push with a stop channel that closes mid-way
	PHeldUp      float64    // PushWith with a heldUp callback rather than Push
}

type stressConsumer struct {
	Share     int // 0: share false, 1: true, 2: either, at random for each Pop
	MaxDst    int
	PSeparate float64 // Release what it took on its own, not in the next Pop
	PReturn   float64 // Returning, then Returned (or Revoke) before the Pop
	PRevoke   float64
	PUnpop    float64 // (MayUnpop rounds only) give part of what it took back
	PCancel   float64 // a Pop with a cancel channel that closes mid-way
	PTimeout  float64 // a Pop with a timeout
	Work      int     // up to this many yields while it holds items
}

type stressConfig struct {
	Seed      uint64
	Procs     int // GOMAXPROCS
	Slots     int
	Policy    Overflow // the queue's, for Push
	MayUnpop  bool
	ShareDiv  int // the consumers NewQueue is told of
	Total     int // items
	Producers []stressProducer
	Consumers []stressConsumer
}

func (c stressConfig) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed=%d GOMAXPROCS=%d slots=%d (batch %d) policy=%s mayUnpop=%v shareDiv=%d items=%d",
		c.Seed, c.Procs, c.Slots, max(1, c.Slots/8), overflowNames[c.Policy], c.MayUnpop, c.ShareDiv, c.Total)
	for i, p := range c.Producers {
		var pol []string
		for _, o := range p.Policies {
			pol = append(pol, overflowNames[o])
		}
		fmt.Fprintf(&b, "\n  producer %d: items %d..%d PPush=%.2f MaxBatch=%d offers=%v PStop=%.2f PHeldUp=%.2f",
			i, p.First, p.First+p.Items-1, p.PPush, p.MaxBatch, pol, p.PStop, p.PHeldUp)
	}
	for i, cc := range c.Consumers {
		fmt.Fprintf(&b, "\n  consumer %d: %+v", i, cc)
	}
	return b.String()
}

func randomStressConfig(seed uint64) stressConfig {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	pick := func(ps ...float64) float64 { return ps[rng.IntN(len(ps))] }
	c := stressConfig{Seed: seed, Procs: []int{1, 2, 2, 4}[rng.IntN(4)], Slots: 1 + rng.IntN(32)}
	if rng.IntN(2) == 0 {
		// From 16 slots a batch is more than one slot: held-up producers wait for room to be
		// due, and blocking pushes queue behind them (mayPut).
		c.Slots = 16 + rng.IntN(17)
	}
	switch r := rng.IntN(10); {
	case r < 6:
		c.Policy = OverflowBlock
	case r < 8:
		c.Policy = OverflowDropOldest
	default:
		c.Policy = OverflowDeadLetter
	}
	c.MayUnpop = rng.IntN(3) == 0
	np, nc := 1+rng.IntN(6), 1+rng.IntN(6)
	c.ShareDiv = nc
	if rng.IntN(5) == 0 {
		c.ShareDiv = 1 + rng.IntN(6)
	}
	for range np {
		p := stressProducer{First: c.Total, Items: 1 + rng.IntN(stressMaxItems), PPush: pick(0, 0.5, 1, rng.Float64()),
			MaxBatch: 1 + rng.IntN(8), Policies: []Overflow{OverflowBlock}, PStop: pick(0, 0, 0.02, 0.1), PHeldUp: pick(0, 0, 0.3)}
		for _, o := range []Overflow{OverflowReject, OverflowDropOldest, OverflowDeadLetter} {
			if rng.IntN(4) == 0 {
				p.Policies = append(p.Policies, o)
			}
		}
		c.Total += p.Items
		c.Producers = append(c.Producers, p)
	}
	for range nc {
		cc := stressConsumer{Share: rng.IntN(3), MaxDst: 1 + rng.IntN(10), PSeparate: pick(0, 0.5, 1, rng.Float64()),
			PReturn: pick(0, 0.1, 0.5), PRevoke: pick(0, 0.3), PCancel: pick(0, 0, 0.05, 0.2), PTimeout: pick(0, 0, 0.05),
			Work: rng.IntN(4)}
		if c.MayUnpop {
			cc.PUnpop = pick(0, 0.05, 0.2)
		}
		c.Consumers = append(c.Consumers, cc)
	}
	return c
}

// stressStats counts, over all rounds, what the rounds went through: a check that the states
// and paths that matter were reached.
type stressStats struct {
	rounds, items, pushes, offers, pops, emptyPops, unpopped, parked, evicted, kept atomic.Int64
	heldUp, queuedBehind, consWaiting                                               atomic.Int64
}

type stressRound struct {
	cfg   stressConfig
	q     *Queue[int]
	st    *stressStats
	fate  []atomic.Int32 // per item, fateKind k adds 1<<(8*k)
	held  atomic.Int64   // items consumers hold: added after a Pop, taken off before a Release or Unpop (never over the truth)
	ring  atomic.Int64   // evicted items that were queued (drop-oldest), not new ones (dead-letter)
	wg    sync.WaitGroup // producers and consumers
	aux   sync.WaitGroup // the goroutines that close stop and cancel channels
	phase []atomic.Int32 // per goroutine (producers, then consumers), for the dump
	ops   []atomic.Int64

	mu   sync.Mutex
	errs []string
}

const (
	phaseIdle = iota
	phasePush
	phaseOffer
	phasePop
	phaseRelease
	phaseUnpop
	phaseDone
)

var phaseNames = []string{"idle", "push", "offer", "pop", "release", "unpop", "done"}

// fail records a failure; the test goroutine reports it (the round's goroutines never call t).
func (r *stressRound) fail(format string, args ...any) {
	r.mu.Lock()
	if len(r.errs) < 20 {
		r.errs = append(r.errs, fmt.Sprintf(format, args...))
	}
	r.mu.Unlock()
}

func (r *stressRound) mark(e Envelope[int], kind int) {
	if e.V < 0 || e.V >= len(r.fate) {
		r.fail("an item that was never pushed: %d", e.V)
		return
	}
	r.fate[e.V].Add(1 << (8 * kind))
}

// closer returns a channel that a goroutine of its own closes after a few yields (at once, or
// while the push or Pop it is given to waits).
func (r *stressRound) closer(rng *rand.Rand) <-chan struct{} {
	c := make(chan struct{})
	k := rng.IntN(64)
	r.aux.Go(func() {
		for range k {
			runtime.Gosched()
		}
		close(c)
	})
	return c
}

// check takes the queue's lock and checks its invariants. At every point the lock is free,
// the queue's accounting holds and no wake-up is lost.
func (r *stressRound) check() {
	r.q.mu.Lock()
	r.checkLocked()
	r.q.mu.Unlock()
}

func (r *stressRound) checkLocked() {
	q := r.q
	slots := len(q.ring)
	held := int(r.held.Load())
	switch {
	case q.n < 0 || q.free < 0 || q.n+q.free > slots:
		r.fail("slot accounting: n=%d free=%d slots=%d", q.n, q.free, slots)
	case held+q.n+q.free > slots:
		// held never counts more than the consumers hold: queued plus held would exceed the slots.
		r.fail("slot bound: %d queued + %d held by consumers + %d free > %d slots", q.n, held, q.free, slots)
	}
	if q.prodWait < 0 || q.dropWait < 0 || q.dropWait > q.prodWait || q.consWait < 0 {
		r.fail("waiter counts: prodWait=%d dropWait=%d consWait=%d", q.prodWait, q.dropWait, q.consWait)
	}
	if !q.waking && len(q.notFull) != 0 {
		r.fail("a producer wake-up is pending and waking is not set")
	}
	// A lost wake-up: producers are held up, room is due (producerDue) and none is woken. Every
	// change that can make room due (a Release, a Pop, a put that leaves slots free, a waiter
	// that gives up) wakes one, and the woken one, finding a free slot, always puts and passes
	// the wake-up on while one is left (batonDue).
	if q.prodWait > 0 && q.free > 0 && q.roomDue() && !q.waking {
		r.fail("lost wake-up: %d producer(s) held up, room due (free=%d, n=%d, batch=%d), none woken", q.prodWait, q.free, q.n, q.batch)
	}
	if q.prodWait > 0 {
		r.st.heldUp.Add(1)
		if q.free > 0 && !q.roomDue() {
			r.st.queuedBehind.Add(1)
		}
	}
	if q.consWait > 0 {
		r.st.consWaiting.Add(1)
	}
	// The same for a drop-oldest producer, which can go as soon as an item is queued (it evicts
	// it). Every change that queues one (a put, an Unpop) wakes a producer, and the woken one
	// goes or, if it cannot (a blocking one with no free slot: a push that does not wait took
	// the slot it was woken for, or it was ahead of the drop-oldest one in line), passes the
	// wake-up on before it waits again.
	if q.dropDue() && !q.waking {
		r.fail("lost wake-up: %d drop-oldest producer(s) held up with %d item(s) queued, none woken", q.dropWait, q.n)
	}
}

func (r *stressRound) producer(i int) {
	defer r.wg.Done()
	defer r.q.ProducerDone()
	defer r.phase[i].Store(phaseDone)
	pc := r.cfg.Producers[i]
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(1+i)))
	buf := make([]Envelope[int], 8)
	for next, end := pc.First, pc.First+pc.Items; next < end; {
		r.ops[i].Add(1)
		if rng.Float64() < pc.PPush {
			b := buf[:min(1+rng.IntN(pc.MaxBatch), end-next)]
			for j := range b {
				b[j] = Envelope[int]{V: next + j}
			}
			next += len(b)
			var stop <-chan struct{}
			if rng.Float64() < pc.PStop {
				stop = r.closer(rng)
			}
			r.st.pushes.Add(1)
			r.phase[i].Store(phasePush)
			var ok bool
			if rng.Float64() < pc.PHeldUp {
				ok = r.q.PushWith(stop, b, func() {}, rng.IntN(2) == 0)
			} else {
				ok = r.q.Push(stop, b)
			}
			if !ok && stop == nil {
				r.fail("producer %d: Push returned false with no stop channel", i)
			}
		} else {
			policy := pc.Policies[rng.IntN(len(pc.Policies))]
			e := Envelope[int]{V: next}
			next++
			var stop1, stop2 <-chan struct{}
			if rng.Float64() < pc.PStop {
				if rng.IntN(2) == 0 {
					stop1 = r.closer(rng)
				} else {
					stop2 = r.closer(rng)
				}
			}
			r.st.offers.Add(1)
			r.phase[i].Store(phaseOffer)
			res := r.q.Offer(e, policy, stop1, stop2)
			switch res {
			case Admitted:
			case Evicted: // Evict marked it
				if policy != OverflowDeadLetter {
					r.fail("producer %d: Offer under policy %s returned Evicted", i, overflowNames[policy])
				}
			case Full, Stopped:
				r.mark(e, fateKept)
				if res == Full && policy != OverflowReject {
					r.fail("producer %d: Offer under policy %s returned Full", i, overflowNames[policy])
				}
				if res == Stopped && (stop1 == nil && stop2 == nil || policy == OverflowReject || policy == OverflowDeadLetter) {
					r.fail("producer %d: Offer under policy %s returned Stopped (stop channels %v, %v)", i, overflowNames[policy], stop1 != nil, stop2 != nil)
				}
			default:
				r.mark(e, fateKept)
				r.fail("producer %d: Offer returned %d before the producer was done", i, res)
			}
		}
		r.phase[i].Store(phaseIdle)
		r.check()
	}
}

func (r *stressRound) consumer(i int) {
	g := len(r.cfg.Producers) + i
	defer r.wg.Done()
	defer r.phase[g].Store(phaseDone)
	cc := r.cfg.Consumers[i]
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(100+i)))
	buf := make([]Envelope[int], cc.MaxDst)
	held := 0 // slots this consumer holds
	for {
		r.ops[g].Add(1)
		release := 0
		if held > 0 {
			// Every slot goes back before the consumer may wait in Pop: a consumer waiting while
			// it holds slots could wait for itself (MayUnpop), or for producers held up for them.
			r.held.Add(int64(-held))
			if rng.Float64() < cc.PSeparate {
				r.phase[g].Store(phaseRelease)
				r.q.Release(held)
			} else {
				release = held
			}
			held = 0
		}
		if rng.Float64() < cc.PReturn {
			r.q.Returning()
			runtime.Gosched() // (a push of its outputs downstream)
			if rng.Float64() < cc.PRevoke {
				r.q.Revoke()
			} else {
				r.q.Returned()
			}
		}
		var cancel <-chan struct{}
		var timeout <-chan time.Time
		var timer *time.Timer
		if rng.Float64() < cc.PCancel {
			cancel = r.closer(rng)
		}
		if rng.Float64() < cc.PTimeout {
			timer = time.NewTimer(time.Duration(rng.IntN(100)) * time.Microsecond)
			timeout = timer.C
		}
		share := cc.Share == 1 || cc.Share == 2 && rng.IntN(2) == 0
		dst := buf[:1+rng.IntN(len(buf))]
		r.st.pops.Add(1)
		r.phase[g].Store(phasePop)
		n, ok := r.q.Pop(dst, share, release, timeout, cancel)
		r.phase[g].Store(phaseIdle)
		if timer != nil {
			timer.Stop()
		}
		if n < 0 || n > len(dst) || !ok && n != 0 {
			r.fail("consumer %d: Pop into %d returned %d, %v", i, len(dst), n, ok)
			return
		}
		if !ok {
			return
		}
		if n == 0 {
			r.st.emptyPops.Add(1)
			if cancel == nil && timeout == nil {
				r.fail("consumer %d: Pop returned nothing, with no cancel channel or timeout", i)
			}
			r.check()
			continue
		}
		r.held.Add(int64(n))
		r.check()
		keep := n
		if r.cfg.MayUnpop && rng.Float64() < cc.PUnpop {
			keep = rng.IntN(n) // gives back 1..n items: the later ones
			r.held.Add(int64(keep - n))
			r.st.unpopped.Add(int64(n - keep))
			r.phase[g].Store(phaseUnpop)
			r.q.Unpop(dst[keep:n])
			r.phase[g].Store(phaseIdle)
		}
		for _, e := range dst[:keep] {
			if e.M.Enqueued == 0 {
				r.fail("consumer %d: item %d taken without an enqueue stamp", i, e.V)
			}
			r.mark(e, fateConsumed)
		}
		held = keep
		for range rng.IntN(cc.Work + 1) {
			runtime.Gosched() // (its calls)
		}
		r.check()
	}
}

// dump describes the queue and the round's goroutines, for a round that did not end.
func (r *stressRound) dump() string {
	var b strings.Builder
	q := r.q
	locked := false
	for range 1000 {
		if locked = q.mu.TryLock(); locked {
			break
		}
		runtime.Gosched()
	}
	if locked {
		fmt.Fprintf(&b, "queue: slots=%d n=%d free=%d head=%d batch=%d roomDue=%v closed=%v consWait=%d prodWait=%d dropWait=%d waking=%v len(notFull)=%d len(notEmpty)=%d producers=%d returning=%d pushed=%d unpops=%v held(counted)=%d\n",
			len(q.ring), q.n, q.free, q.head, q.batch, q.roomDue(), q.closed, q.consWait, q.prodWait, q.dropWait, q.waking,
			len(q.notFull), len(q.notEmpty), q.producers.Load(), q.returning.Load(), q.pushed, q.unpops, r.held.Load())
		q.mu.Unlock()
	} else {
		b.WriteString("queue: its lock is held and not given back\n")
	}
	for g := range r.phase {
		who := fmt.Sprintf("producer %d", g)
		if g >= len(r.cfg.Producers) {
			who = fmt.Sprintf("consumer %d", g-len(r.cfg.Producers))
		}
		fmt.Fprintf(&b, "%s: %s, %d ops\n", who, phaseNames[r.phase[g].Load()], r.ops[g].Load())
	}
	stacks := make([]byte, 1<<20)
	stacks = stacks[:runtime.Stack(stacks, true)]
	for _, s := range strings.Split(string(stacks), "\n\n") {
		if strings.Contains(s, "stress_test.go") && !strings.Contains(s, "TestQueueRandomizedStress(") {
			b.WriteString(s)
			b.WriteString("\n\n")
		}
	}
	return b.String()
}

// runStressRound runs one round and returns its failures (none: the round passed).
func runStressRound(cfg stressConfig, st *stressStats) (errs []string, hung string) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(cfg.Procs))
	r := &stressRound{cfg: cfg, st: st, fate: make([]atomic.Int32, cfg.Total)}
	n := len(cfg.Producers) + len(cfg.Consumers)
	r.phase, r.ops = make([]atomic.Int32, n), make([]atomic.Int64, n)
	q := NewQueue[int](cfg.Slots, cfg.ShareDiv, Clock{Epoch: time.Now()})
	q.Policy = cfg.Policy
	if cfg.MayUnpop {
		q.MayUnpop()
	}
	q.Park = func(e Envelope[int]) {
		if e.M.Enqueued != 0 {
			r.fail("item %d parked after it was put in", e.V)
		}
		r.mark(e, fateParked)
	}
	q.Evict = func(e Envelope[int]) {
		if e.M.Enqueued != 0 {
			r.ring.Add(1) // an old item, evicted from the queue
		}
		r.mark(e, fateEvicted)
	}
	q.Inline = func(Envelope[int]) { r.fail("Inline called") }
	r.q = q
	q.AddProducers(len(cfg.Producers))
	for i := range cfg.Consumers {
		r.wg.Add(1)
		go r.consumer(i)
	}
	for i := range cfg.Producers {
		r.wg.Add(1)
		go r.producer(i)
	}
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		r.aux.Wait()
		close(done)
	}()
	deadline := time.NewTimer(stressDeadline)
	select {
	case <-done:
		deadline.Stop()
	case <-deadline.C:
		d := r.dump()
		r.mu.Lock()
		defer r.mu.Unlock()
		return append([]string(nil), r.errs...), d
	}

	// Every item pushed went exactly one way, once.
	var count [fateKinds]int
	for id := range r.fate {
		v, ok := r.fate[id].Load(), false
		for k := range fateKinds {
			if v == 1<<(8*k) {
				count[k]++
				ok = true
			}
		}
		if !ok {
			var what []string
			for k := range fateKinds {
				if c := v >> (8 * k) & 0xff; c != 0 {
					what = append(what, fmt.Sprintf("%s %dx", fateNames[k], c))
				}
			}
			if what == nil {
				what = []string{"lost"}
			}
			r.fail("item %d: %s", id, strings.Join(what, ", "))
		}
	}
	// The queue is back where it started, and counted every item it took.
	q.mu.Lock()
	r.checkLocked()
	if q.n != 0 || q.free != cfg.Slots || !q.closed || q.prodWait != 0 || q.dropWait != 0 || q.consWait != 0 ||
		q.returning.Load() != 0 || q.producers.Load() != 0 || r.held.Load() != 0 || q.waking != (len(q.notFull) == 1) {
		r.fail("at the end: n=%d free=%d closed=%v prodWait=%d dropWait=%d consWait=%d returning=%d producers=%d held=%d waking=%v len(notFull)=%d",
			q.n, q.free, q.closed, q.prodWait, q.dropWait, q.consWait, q.returning.Load(), q.producers.Load(), r.held.Load(), q.waking, len(q.notFull))
	}
	if in := int64(count[fateConsumed]) + r.ring.Load(); q.pushed != in {
		r.fail("pushed=%d, but %d items were consumed and %d evicted from the queue", q.pushed, count[fateConsumed], r.ring.Load())
	}
	q.mu.Unlock()
	st.rounds.Add(1)
	st.items.Add(int64(cfg.Total))
	st.parked.Add(int64(count[fateParked]))
	st.evicted.Add(int64(count[fateEvicted]))
	st.kept.Add(int64(count[fateKept]))
	return r.errs, ""
}

// TestQueueRandomizedStress runs many seeded rounds of random producers (Push and Offer under
// every policy, stop channels that close mid-push) and consumers (fair shares or not, Release
// in the next Pop or on its own, Returning, Unpop, Pops cancelled or timed out) against queues
// of 1..32 slots, and checks that every item pushed is consumed, parked, evicted or handed back
// exactly once; that queued plus held items never exceed the slots; that no wake-up of a
// held-up producer is lost; and that every round ends. Replay a failing round with the seed it
// prints: -stress.seed=N -stress.rounds=1. (The package's TestMain checks that no goroutine leaks.)
func TestQueueRandomizedStress(t *testing.T) {
	rounds := 1200 // about 6 s with -race on 2 cores
	if testing.Short() {
		rounds = 150
	}
	if *stressRounds > 0 {
		rounds = *stressRounds
	}
	seed := *stressSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seeds %d..%d", seed, seed+uint64(rounds)-1)
	var st stressStats
	start := time.Now()
	for i := range rounds {
		cfg := randomStressConfig(seed + uint64(i))
		errs, hung := runStressRound(cfg, &st)
		replay := fmt.Sprintf("replay: go test -race -run TestQueueRandomizedStress ./internal/core/ -stress.seed=%d -stress.rounds=1", cfg.Seed)
		if hung != "" {
			t.Fatalf("round %d did not end in %v (a lost wake-up or a deadlock); %s\n%s\nfailures so far: %q\n%s",
				i, stressDeadline, replay, cfg, errs, hung)
		}
		if len(errs) > 0 {
			t.Fatalf("round %d failed; %s\n%s\n%s", i, replay, cfg, strings.Join(errs, "\n"))
		}
	}
	t.Logf("%d rounds in %v: %d items, %d pushes, %d offers, %d pops (%d empty: cancelled or timed out), %d unpopped, %d parked, %d evicted, %d handed back",
		st.rounds.Load(), time.Since(start).Round(time.Millisecond), st.items.Load(), st.pushes.Load(), st.offers.Load(), st.pops.Load(),
		st.emptyPops.Load(), st.unpopped.Load(), st.parked.Load(), st.evicted.Load(), st.kept.Load())
	// The rounds reached the states that the checks are about.
	for what, n := range map[string]int64{
		"a producer held up": st.heldUp.Load(), "a blocking push queued behind held-up producers": st.queuedBehind.Load(),
		"a consumer waiting": st.consWaiting.Load(), "an empty Pop (cancelled or timed out)": st.emptyPops.Load(),
		"an Unpop": st.unpopped.Load(), "a parked item": st.parked.Load(), "an evicted item": st.evicted.Load(),
		"an item handed back by Offer": st.kept.Load(),
	} {
		if n == 0 {
			t.Errorf("no round saw %s", what)
		}
	}
}
