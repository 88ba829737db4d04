package auth

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"os"
	"strings"
)

// MinTokenLength is the shortest token accepted: 32 characters, e.g. the 64
// of `openssl rand -hex 32`.
const MinTokenLength = 32

// Tokens are the bearer tokens a token file grants. Only their SHA-256 is
// kept, so a memory dump does not hand them out.
type Tokens struct {
	entries []tokenEntry
}

type tokenEntry struct {
	sum [sha256.Size]byte
	id  Identity
}

// Len is the number of tokens; a nil *Tokens has none.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	return len(t.entries)
}

// LoadTokens reads a token file: one token a line as `<name> <roles> <token>`,
// roles comma-separated (read, write), blank lines and `#` comments ignored.
// Like ssh with private keys, it refuses a file that group or others may
// read or write. Errors name lines, never their tokens.
func LoadTokens(path string) (*Tokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s is accessible by group or others (mode %04o); it holds secrets: chmod 600 it", path, perm)
	}
	t, err := parseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

func parseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{}
	names := map[string]int{}
	sums := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 {
			return nil, fmt.Errorf("line %d: want `<name> <roles> <token>`, got %d fields", n, len(fields))
		}
		name, token := fields[0], fields[2]
		roles, err := ParseRoles(fields[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if len(token) < MinTokenLength {
			return nil, fmt.Errorf("line %d: token of %s is shorter than %d characters", n, name, MinTokenLength)
		}
		if prev, ok := names[name]; ok {
			return nil, fmt.Errorf("line %d: name %s is already used on line %d", n, name, prev)
		}
		sum := sha256.Sum256([]byte(token))
		if prev, ok := sums[sum]; ok {
			return nil, fmt.Errorf("line %d: same token as line %d", n, prev)
		}
		names[name], sums[sum] = n, n
		t.entries = append(t.entries, tokenEntry{sum: sum, id: Identity{Name: name, Via: ViaToken, Roles: roles}})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(t.entries) == 0 {
		return nil, fmt.Errorf("no tokens")
	}
	return t, nil
}

// lookup finds the identity of token. It compares with every entry in
// constant time, so timing tells nothing of which entry nearly matched.
func (t *Tokens) lookup(token string) (Identity, bool) {
	sum := sha256.Sum256([]byte(token))
	var (
		found Identity
		ok    bool
	)
	for _, e := range t.entries {
		if subtle.ConstantTimeCompare(sum[:], e.sum[:]) == 1 {
			found, ok = e.id, true
		}
	}
	return found, ok
}
