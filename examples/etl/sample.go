package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The sample dataset. Its files are named by reference "s<seed>-r<rows>/part-NNNN.csv": the
// content of a file depends only on the seed, the mean number of rows per file and the file's
// number, so any run or replay regenerates it identically, and the sample server can serve the
// files of any dataset a dead letter refers to.

// sampleHeader is the header line of every sample file.
var sampleHeader = []string{"id", "name", "email", "amount", "currency", "created_at"}

// Limits of the sample dataset, which keep the embedded server's work bounded.
const (
	maxSampleFiles = 99999
	maxSampleRows  = 100000
	// dirtyFileRate is the share of sample files that hold a malformed row.
	dirtyFileRate = 0.05
)

// sampleSpec identifies a sample dataset.
type sampleSpec struct {
	Seed uint64
	Rows int // mean number of rows per file
}

// dir returns the dataset's name, the directory of its files on the sample server.
func (s sampleSpec) dir() string { return fmt.Sprintf("s%d-r%d", s.Seed, s.Rows) }

// ref returns the reference of file i (from 1) of the dataset.
func (s sampleSpec) ref(i int) string { return fmt.Sprintf("%s/part-%04d.csv", s.dir(), i) }

var sampleRefRE = regexp.MustCompile(`^s([0-9]{1,20})-r([0-9]{1,6})/part-([0-9]{4,5})\.csv$`)

// parseSampleRef parses a sample file reference made by sampleSpec.ref.
func parseSampleRef(ref string) (sampleSpec, int, bool) {
	m := sampleRefRE.FindStringSubmatch(ref)
	if m == nil {
		return sampleSpec{}, 0, false
	}
	seed, err1 := strconv.ParseUint(m[1], 10, 64)
	rows, err2 := strconv.Atoi(m[2])
	idx, err3 := strconv.Atoi(m[3])
	if err1 != nil || err2 != nil || err3 != nil || rows < 1 || rows > maxSampleRows || idx < 1 || idx > maxSampleFiles {
		return sampleSpec{}, 0, false
	}
	return sampleSpec{Seed: seed, Rows: rows}, idx, true
}

// sampleFile is one generated CSV file.
type sampleFile struct {
	Ref  string
	Data []byte
	// Rows is the number of data rows (the header excluded).
	Rows int
	// Malformed lists the data rows (from 1) that are malformed.
	Malformed []int
}

var (
	sampleNames      = []string{"Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis", "Radia", "John", "Sophie", "Tony", "Hedy", "Niklaus"}
	sampleCurrencies = []string{"EUR", "USD", "GBP", "JPY", "CHF"}
	sampleEpoch      = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
)

// genFile generates file i (from 1) of the dataset: about spec.Rows rows (between half and one
// and a half times as many), and in about one file in twenty, one malformed row.
func genFile(spec sampleSpec, i int) sampleFile {
	rng := rand.New(rand.NewPCG(spec.Seed, uint64(i)<<20|uint64(spec.Rows)))
	n := max(1, spec.Rows/2+rng.IntN(spec.Rows+1))
	bad := 0
	if rng.Float64() < dirtyFileRate {
		bad = 1 + rng.IntN(n)
	}
	var b bytes.Buffer
	b.Grow(n * 80)
	b.WriteString(strings.Join(sampleHeader, ","))
	b.WriteByte('\n')
	f := sampleFile{Ref: spec.ref(i), Rows: n}
	for k := 1; k <= n; k++ {
		id := strconv.Itoa(i*1_000_000 + k)
		name := sampleNames[rng.IntN(len(sampleNames))]
		email := strings.ToLower(name) + "." + id + "@example.com"
		amount := strconv.FormatFloat(float64(rng.IntN(1_000_000))/100, 'f', 2, 64)
		currency := sampleCurrencies[rng.IntN(len(sampleCurrencies))]
		created := sampleEpoch.Add(time.Duration(rng.IntN(365*24*3600)) * time.Second).Format(time.RFC3339)
		fields := []string{id, name, email, amount, currency, created}
		if k == bad {
			f.Malformed = append(f.Malformed, k)
			switch rng.IntN(5) {
			case 0: // a missing column
				fields = fields[:len(fields)-1]
			case 1: // not a number
				fields[3] = "N/A"
			case 2: // not a time
				fields[5] = "2025-13-45T25:61:00Z"
			case 3: // a bare quote: a CSV syntax error
				fields[1] = name[:2] + `"` + name[2:]
			case 4: // not an e-mail address
				fields[2] = strings.ToLower(name) + ".example.com"
			}
		}
		b.WriteString(strings.Join(fields, ","))
		b.WriteByte('\n')
	}
	f.Data = b.Bytes()
	return f
}

// faultKind is a fault the embedded servers inject.
type faultKind int

const (
	faultNone        faultKind = iota
	faultUnavailable           // 503 with Retry-After
	faultSlow                  // a response slower than any sensible timeout
	faultReset                 // the connection is reset in the middle of the body
	faultNotFound              // a permanent 404 (the same files every time)
	faultLost                  // the object store stores the object, then resets the connection
	numFaultKinds
)

var faultNames = [numFaultKinds]string{"", "503", "slow", "reset", "404", "lost-response"}

// faultPlan decides the faults of the embedded servers. A decision depends only on the seed,
// the path and how many times the path was requested before, so a run is repeatable whatever
// the order of requests.
type faultPlan struct {
	rate     float64
	seed     uint64
	mu       sync.Mutex
	hits     map[string]int
	injected [numFaultKinds]atomic.Int64
}

func newFaultPlan(rate float64, seed uint64) *faultPlan {
	return &faultPlan{rate: rate, seed: seed, hits: map[string]int{}}
}

// unit hashes its arguments into [0, 1).
func (f *faultPlan) unit(parts ...string) float64 {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], f.seed)
	h.Write(b[:])
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	x := h.Sum64()
	// splitmix64 finalizer: FNV's low bits are weak.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// permanent404 reports whether the file at path is missing for good (about rate/10 of files).
func (f *faultPlan) permanent404(path string) bool {
	return f.rate > 0 && f.unit("404", path) < f.rate/10
}

// next decides the fault of the next request for path, among kinds.
func (f *faultPlan) next(path string, kinds ...faultKind) faultKind {
	if f.rate <= 0 {
		return faultNone
	}
	f.mu.Lock()
	n := f.hits[path]
	if len(f.hits) < 1_000_000 {
		f.hits[path] = n + 1
	}
	f.mu.Unlock()
	nth := strconv.Itoa(n)
	if f.unit("fault", path, nth) >= f.rate {
		return faultNone
	}
	k := kinds[int(f.unit("kind", path, nth)*float64(len(kinds)))]
	f.injected[k].Add(1)
	return k
}

// summary returns what was injected, e.g. "503 ×4, slow ×2".
func (f *faultPlan) summary() string {
	var parts []string
	for k := faultUnavailable; k < numFaultKinds; k++ {
		if n := f.injected[k].Load(); n > 0 {
			parts = append(parts, fmt.Sprintf("%s ×%d", faultNames[k], n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// serverOptions tune the embedded servers.
type serverOptions struct {
	// Latency delays every response of the sample server (a slowed dataset).
	Latency time.Duration
	// Slow is how long a slow response stalls before it is sent (if the client still waits).
	Slow time.Duration
	// RetryAfter is the Retry-After of a 503, in whole seconds as HTTP has it.
	RetryAfter int
	// MaxConcurrent bounds the requests a server works on at once.
	MaxConcurrent int
}

func (o serverOptions) withDefaults() serverOptions {
	if o.Slow <= 0 {
		o.Slow = 30 * time.Second
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 1
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 128
	}
	return o
}

// localServer is an HTTP server on 127.0.0.1 and a random port.
type localServer struct {
	URL     string
	srv     *http.Server
	served  chan struct{}
	closing chan struct{}
	once    sync.Once
}

func startLocal(h func(closing <-chan struct{}) http.Handler) (*localServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &localServer{URL: "http://" + ln.Addr().String(), served: make(chan struct{}), closing: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           h(s.closing),
		ReadHeaderTimeout: 5 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// Close stops the server at once: it is closed after the run, so no request is in flight
// that matters, and handlers that stall give up.
func (s *localServer) Close() {
	s.once.Do(func() {
		close(s.closing)
		_ = s.srv.Close()
		<-s.served
	})
}

// bounded limits the requests a handler works on at once; the others get 503.
func bounded(n int, h http.Handler) http.Handler {
	sem := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
			h.ServeHTTP(w, r)
		default:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "busy", http.StatusServiceUnavailable)
		}
	})
}

// pause waits d, unless the request or the server ends first; false means stop.
func pause(r *http.Request, closing <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
	case <-closing:
	}
	return false
}

// resetAfter writes head and body raw on the hijacked connection, then resets it (RST).
func resetAfter(w http.ResponseWriter, head string, body []byte) {
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "reset", http.StatusInternalServerError)
		return
	}
	_, _ = buf.WriteString(head)
	_, _ = buf.Write(body)
	_ = buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

func unavailable(w http.ResponseWriter, opts serverOptions) {
	w.Header().Set("Retry-After", strconv.Itoa(opts.RetryAfter))
	http.Error(w, "injected fault: try again later", http.StatusServiceUnavailable)
}

// sampleServer serves the files of any sample dataset at /<ref>, with the faults of plan.
func sampleServer(plan *faultPlan, opts serverOptions) func(closing <-chan struct{}) http.Handler {
	opts = opts.withDefaults()
	return func(closing <-chan struct{}) http.Handler {
		return bounded(opts.MaxConcurrent, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
				return
			}
			ref := strings.TrimPrefix(r.URL.Path, "/")
			spec, idx, ok := parseSampleRef(ref)
			if !ok {
				http.NotFound(w, r)
				return
			}
			if !pause(r, closing, opts.Latency) {
				return
			}
			if plan.permanent404(ref) {
				plan.injected[faultNotFound].Add(1)
				http.Error(w, "injected fault: no such file", http.StatusNotFound)
				return
			}
			f := genFile(spec, idx)
			switch plan.next(ref, faultUnavailable, faultSlow, faultReset) {
			case faultUnavailable:
				unavailable(w, opts)
				return
			case faultSlow:
				if !pause(r, closing, opts.Slow) {
					return
				}
			case faultReset:
				head := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\nContent-Length: %d\r\n\r\n", len(f.Data))
				resetAfter(w, head, f.Data[:len(f.Data)/2])
				return
			}
			sum := sha256.Sum256(f.Data)
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			w.Header().Set("Content-Length", strconv.Itoa(len(f.Data)))
			w.Header().Set(checksumHeader, hex.EncodeToString(sum[:]))
			_, _ = w.Write(f.Data)
		}))
	}
}

// maxObjectSize bounds the body of a PUT to the object store.
const maxObjectSize = 64 << 20

var objectNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$`)

// objectStore accepts PUT /<name> into dir (and serves GET /<name> back), with the faults of
// plan: 503s, and responses lost after the object was stored.
func objectStore(dir string, plan *faultPlan, opts serverOptions) func(closing <-chan struct{}) http.Handler {
	opts = opts.withDefaults()
	return func(closing <-chan struct{}) http.Handler {
		return bounded(opts.MaxConcurrent, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := strings.TrimPrefix(r.URL.Path, "/")
			if !objectNameRE.MatchString(name) || strings.Contains(name, "..") {
				http.Error(w, "bad object name", http.StatusBadRequest)
				return
			}
			path := filepath.Join(dir, name)
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				http.ServeFile(w, r, path)
				return
			case http.MethodPut:
			default:
				http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
				return
			}
			body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxObjectSize))
			if err != nil {
				var mbe *http.MaxBytesError
				if errors.As(err, &mbe) {
					http.Error(w, "object too large", http.StatusRequestEntityTooLarge)
					return
				}
				http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
				return
			}
			if want := r.Header.Get(checksumHeader); want != "" {
				if sum := sha256.Sum256(body); hex.EncodeToString(sum[:]) != want {
					http.Error(w, "checksum mismatch", http.StatusBadRequest)
					return
				}
			}
			fault := plan.next(name, faultUnavailable, faultLost)
			if fault == faultUnavailable {
				unavailable(w, opts)
				return
			}
			if err := writeFileAtomic(path, body); err != nil {
				http.Error(w, "storing the object failed", http.StatusInternalServerError)
				return
			}
			if fault == faultLost {
				resetAfter(w, "", nil)
				return
			}
			w.WriteHeader(http.StatusCreated)
		}))
	}
}

// writeFileAtomic writes data to a temporary file next to path and renames it into place, so
// readers never see a partial object and concurrent PUTs of one object do not interleave.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
