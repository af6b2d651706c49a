package dlq

import (
	"crypto/rand"
	"time"
)

// crockford is Crockford's base32 alphabet, as used by ULIDs.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewID returns a new record ID: a 26-character ULID (48-bit Unix
// millisecond timestamp followed by 80 random bits from crypto/rand, in
// Crockford base32). IDs sort by creation time to the millisecond; IDs
// created in the same millisecond are ordered randomly. The 80 random bits
// make collisions negligible, also across goroutines and processes.
func NewID() string {
	var b [16]byte
	ms := uint64(time.Now().UnixMilli())
	b[0] = byte(ms >> 40)
	b[1] = byte(ms >> 32)
	b[2] = byte(ms >> 24)
	b[3] = byte(ms >> 16)
	b[4] = byte(ms >> 8)
	b[5] = byte(ms)
	_, _ = rand.Read(b[6:]) // never fails (crypto/rand crashes the program instead)
	return encodeULID(&b)
}

// encodeULID encodes 128 bits as 26 base32 digits, most significant first
// (the first digit carries only 3 bits).
func encodeULID(b *[16]byte) string {
	hi := uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
	lo := uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 |
		uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
