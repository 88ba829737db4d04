package auth

import (
	"os"
	"strings"
	"testing"

	"github.com/backup-proxy/backup-proxy/agent/auth/authtest"
)

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	good := "# name roles token\n\nreader read " + readerToken + "\n  operator  read,write  " + operatorToken + "  \n"
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		wantErr string
	}{
		{"good", good, 0o600, ""},
		{"owner read-only", good, 0o400, ""},
		{"group readable", good, 0o640, "chmod 600"},
		{"other readable", good, 0o604, "chmod 600"},
		{"short token", "reader read 0123456789\n", 0o600, "shorter than 32"},
		{"bad role", "reader admin " + readerToken + "\n", 0o600, `line 1: role "admin"`},
		{"missing field", "# c\nreader " + readerToken + "\n", 0o600, "line 2"},
		{"duplicate name", "a read " + readerToken + "\na read " + operatorToken + "\n", 0o600, "already used on line 1"},
		{"duplicate token", "a read " + readerToken + "\nb write " + readerToken + "\n", 0o600, "same token as line 1"},
		{"empty", "# nothing\n", 0o600, "no tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := authtest.WriteFile(t, dir, strings.ReplaceAll(tt.name, " ", "-"), []byte(tt.content), tt.mode)
			tokens, err := LoadTokens(path)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tokens.Len() != 2 {
					t.Fatalf("%d tokens, want 2", tokens.Len())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			for _, tok := range []string{readerToken, operatorToken, "0123456789"} {
				if strings.Contains(err.Error(), tok) {
					t.Fatalf("error %q contains a token", err)
				}
			}
		})
	}
	if _, err := LoadTokens(dir + "/missing"); err == nil {
		t.Error("missing file accepted")
	}
}

func TestTokenLookup(t *testing.T) {
	tokens := testTokens(t)
	if id, ok := tokens.lookup(operatorToken); !ok || id.Name != "operator" || id.Roles != Read|Write {
		t.Errorf("lookup(operator) = %+v, %v", id, ok)
	}
	for _, bad := range []string{"", readerToken[:len(readerToken)-1], readerToken + " ", strings.ToUpper(readerToken)} {
		if id, ok := tokens.lookup(bad); ok {
			t.Errorf("lookup(%q) = %+v", bad, id)
		}
	}
	// Only digests are kept.
	for _, e := range tokens.entries {
		if strings.Contains(string(e.sum[:]), readerToken) {
			t.Error("token kept in clear")
		}
	}
}
