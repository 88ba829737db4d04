package quickxor_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/backup-proxy/backup-proxy/graph/quickxor"
)

// Reference vectors from Microsoft (microsoft-365-facts.md section 4).
var vectors = []struct {
	size  int
	input string // base64
	want  string
}{
	{0, "", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="},
	{1, "Sg==", "SgAAAAAAAAAAAAAAAQAAAAAAAAA="},
	{2, "tbQ=", "taAFAAAAAAAAAAAAAgAAAAAAAAA="},
	{3, "0pZP", "0rDEEwAAAAAAAAAAAwAAAAAAAAA="},
	{16, "2fuxhBJXtpWFe8dOfdGeHw==", "O9tHLAghgSvYohKFyMMxnNCHaHg="},
	{40, "YnF4smoy9hox2jBlJ3VUa4qyCRhOZbWcmFGIiszTT4zAdYHsqJazyg==", "arkIn+ELddmE8N34J9ydyFKW+9w="},
}

func TestVectors(t *testing.T) {
	for _, v := range vectors {
		in, err := base64.StdEncoding.DecodeString(v.input)
		if err != nil {
			t.Fatalf("decode %q: %v", v.input, err)
		}
		if len(in) != v.size {
			t.Fatalf("vector %q: size %d, want %d", v.input, len(in), v.size)
		}
		if got := quickxor.Base64(in); got != v.want {
			t.Errorf("Base64(%q) = %s, want %s", v.input, got, v.want)
		}
		d := quickxor.New()
		for _, b := range in { // one byte at a time
			_, _ = d.Write([]byte{b})
		}
		if got := d.Base64(); got != v.want {
			t.Errorf("bytewise(%q) = %s, want %s", v.input, got, v.want)
		}
	}
}

// naive is a direct transcription of the definition: every byte XORed into
// the 160-bit state at bit offset 11*i mod 160, bit by bit.
func naive(data []byte) []byte {
	var state [20]byte
	for i, b := range data {
		off := (11 * i) % 160
		for bit := range 8 {
			if b&(1<<bit) != 0 {
				p := (off + bit) % 160
				state[p/8] ^= 1 << (p % 8)
			}
		}
	}
	n := uint64(len(data))
	for i := range 8 {
		state[12+i] ^= byte(n >> (8 * i))
	}
	return state[:]
}

func TestMatchesDefinitionAndStreaming(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 7, 8, 9, 159, 160, 161, 319, 320, 1000, 4096, 65537, 1 << 20} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		want := naive(data)
		if got := quickxor.Sum(data); !bytes.Equal(got[:], want) {
			t.Fatalf("size %d: one-shot %x, definition %x", size, got, want)
		}
		for trial := range 5 {
			d := quickxor.New()
			rest := data
			for len(rest) > 0 {
				n := 1 + rng.IntN(min(len(rest), 1+rng.IntN(700)))
				_, _ = d.Write(rest[:n])
				rest = rest[n:]
				_ = d.Sum(nil) // Sum must not disturb the state
			}
			if got := d.Sum(nil); !bytes.Equal(got, want) {
				t.Fatalf("size %d trial %d: streamed %x, want %x", size, trial, got, want)
			}
		}
	}
}

func TestHashInterface(t *testing.T) {
	d := quickxor.New()
	if d.Size() != 20 || d.BlockSize() != 160 {
		t.Fatalf("Size/BlockSize = %d/%d", d.Size(), d.BlockSize())
	}
	if _, err := io.WriteString(d, "hello"); err != nil {
		t.Fatal(err)
	}
	prefix := []byte("x")
	out := d.Sum(prefix)
	if len(out) != 21 || out[0] != 'x' {
		t.Fatalf("Sum must append: %x", out)
	}
	d.Reset()
	if got := d.Base64(); got != vectors[0].want {
		t.Fatalf("after Reset = %s, want empty hash", got)
	}
}

func BenchmarkWrite(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		b.Run(byteSize(size), func(b *testing.B) {
			b.SetBytes(int64(size))
			d := quickxor.New()
			for b.Loop() {
				_, _ = d.Write(buf)
			}
		})
	}
}

func byteSize(n int) string {
	if n >= 1<<20 {
		return strconv.Itoa(n>>20) + "MiB"
	}
	return strconv.Itoa(n>>10) + "KiB"
}
