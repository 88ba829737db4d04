package pool

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

var testNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

// Key generation is slow; tests share a few keys.
var (
	keysOnce sync.Once
	keys     []*rsa.PrivateKey
)

func testKey(t testing.TB, i int) *rsa.PrivateKey {
	t.Helper()
	keysOnce.Do(func() {
		for range 3 {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			keys = append(keys, k)
		}
	})
	return keys[i]
}

func selfSigned(t testing.TB, key any, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "backup-proxy test"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
	}
	var pub any
	switch k := key.(type) {
	case *rsa.PrivateKey:
		pub = &k.PublicKey
	case *ecdsa.PrivateKey:
		pub = &k.PublicKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func pkcs8PEM(t testing.TB, key any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func pkcs1PEM(key *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

// validBundle returns a PEM bundle valid at testNow, with key index i.
func validBundle(t testing.TB, i int) ([]byte, *x509.Certificate) {
	key := testKey(t, i)
	c := selfSigned(t, key, testNow.Add(-time.Hour), testNow.Add(365*24*time.Hour))
	return append(certPEM(c), pkcs8PEM(t, key)...), c
}

func TestParseCertificateAccepts(t *testing.T) {
	key := testKey(t, 0)
	c := selfSigned(t, key, testNow.Add(-time.Hour), testNow.Add(365*24*time.Hour))
	p12, err := pkcs12.Modern.Encode(key, c, nil, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	p12Legacy, err := pkcs12.LegacyRC2.Encode(key, c, nil, "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		data     []byte
		password string
	}{
		{"PEM cert + PKCS#8", append(certPEM(c), pkcs8PEM(t, key)...), ""},
		{"PEM PKCS#1 key first", append(pkcs1PEM(key), certPEM(c)...), ""},
		{"PKCS#12 modern", p12, "s3cret"},
		{"PKCS#12 legacy RC2", p12Legacy, "s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCertificate(tt.data, tt.password, testNow)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Leaf().Equal(c) {
				t.Error("leaf is not the certificate")
			}
			if !got.Key.RSA().Equal(key) {
				t.Error("key is not the certificate's key")
			}
			if len(got.SHA1) != 40 || len(got.SHA256) != 64 || strings.ToUpper(got.SHA1) != got.SHA1 {
				t.Errorf("thumbprints %q %q", got.SHA1, got.SHA256)
			}
		})
	}
}

func TestParseCertificateRejects(t *testing.T) {
	key, other := testKey(t, 0), testKey(t, 1)
	valid := selfSigned(t, key, testNow.Add(-time.Hour), testNow.Add(24*time.Hour))
	expired := selfSigned(t, key, time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	future := selfSigned(t, key, time.Date(2027, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2028, 1, 1, 0, 0, 0, 0, time.UTC))
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallCert := selfSigned(t, small, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecCert := selfSigned(t, ec, testNow.Add(-time.Hour), testNow.Add(time.Hour))
	//nolint:staticcheck // building the legacy format that must be refused
	legacy, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key), []byte("pw"), x509.PEMCipherAES256)
	if err != nil {
		t.Fatal(err)
	}
	p12, err := pkcs12.Modern.Encode(key, valid, nil, "right")
	if err != nil {
		t.Fatal(err)
	}
	garbage := bytes.Repeat([]byte{0x30, 0x82, 0xff}, 10<<20/3)

	tests := []struct {
		name      string
		data      []byte
		password  string
		field     string
		wantWords string
	}{
		{"empty", nil, "", "certificate", "empty"},
		{"not a certificate", []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"), "", "certificate", "not a valid X.509 certificate"},
		{"binary junk", []byte{0x30, 0x03, 0x01, 0x02, 0x03, 0xff, 0x00}, "", "certificate", "neither PEM nor a readable PKCS#12"},
		{"10 MB of garbage", garbage, "", "certificate", "at most 1048576"},
		{"client secret", []byte("Zx18Q~abcdefGHIJKLmnopQRSTuvwxYZ0123456789"), "", "certificate", "client secret"},
		{"certificate without key", certPEM(valid), "", "certificate", "no private key"},
		{"key without certificate", pkcs8PEM(t, key), "", "certificate", "no CERTIFICATE"},
		{"wrong key", append(certPEM(valid), pkcs8PEM(t, other)...), "", "certificate", "private key does not match the certificate"},
		{"two keys", append(append(certPEM(valid), pkcs8PEM(t, key)...), pkcs1PEM(other)...), "", "certificate", "2 private keys"},
		{"expired", append(certPEM(expired), pkcs8PEM(t, key)...), "", "certificate", "expired on 2026-01-01"},
		{"not yet valid", append(certPEM(future), pkcs8PEM(t, key)...), "", "certificate", "not valid before 2027-03-01"},
		{"RSA 1024", append(certPEM(smallCert), pkcs1PEM(small)...), "", "certificate", "1024 bits"},
		{"EC key", append(certPEM(ecCert), pkcs8PEM(t, ec)...), "", "certificate", "must be RSA"},
		{"legacy encrypted PEM", append(certPEM(valid), pem.EncodeToMemory(legacy)...), "", "certificate", "RFC 1423"},
		{"wrong PKCS#12 password", p12, "wrong", "certificate_password", "password is wrong"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCertificate(tt.data, tt.password, testNow)
			var ia *InvalidArgumentError
			if !errors.As(err, &ia) {
				t.Fatalf("err = %v, want *InvalidArgumentError", err)
			}
			if ia.Field != tt.field || !strings.Contains(ia.Reason, tt.wantWords) {
				t.Errorf("err = %q on %q, want %q on %q", ia.Reason, ia.Field, tt.wantWords, tt.field)
			}
		})
	}
}

func TestExpiresSoon(t *testing.T) {
	key := testKey(t, 0)
	for _, tt := range []struct {
		left time.Duration
		want bool
	}{{29 * 24 * time.Hour, true}, {31 * 24 * time.Hour, false}} {
		c := selfSigned(t, key, testNow.Add(-time.Hour), testNow.Add(tt.left))
		cert, err := ParseCertificate(append(certPEM(c), pkcs8PEM(t, key)...), "", testNow)
		if err != nil {
			t.Fatal(err)
		}
		if got := cert.ExpiresSoon(testNow); got != tt.want {
			t.Errorf("ExpiresSoon with %v left = %v, want %v", tt.left, got, tt.want)
		}
	}
}

// TestThumbprintMatchesOpenSSL compares with `openssl x509 -fingerprint`,
// which is what operators check against the Entra portal.
func TestThumbprintMatchesOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	bundle, c := validBundle(t, 0)
	cert, err := ParseCertificate(bundle, "", testNow)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(path, certPEM(c), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ alg, want string }{{"-sha1", cert.SHA1}, {"-sha256", cert.SHA256}} {
		out, err := exec.Command(openssl, "x509", "-noout", "-fingerprint", tt.alg, "-in", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		// "SHA1 Fingerprint=AB:CD:..." → "ABCD..."
		_, fp, _ := strings.Cut(strings.TrimSpace(string(out)), "=")
		if got := strings.ReplaceAll(fp, ":", ""); got != tt.want {
			t.Errorf("openssl %s = %s, ours %s", tt.alg, got, tt.want)
		}
	}
}

func FuzzParseCertificate(f *testing.F) {
	bundle, _ := validBundle(f, 0)
	f.Add(bundle, "")
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), "")
	f.Add([]byte{0x30, 0x82, 0x01, 0x00}, "pw")
	f.Add([]byte("secret~value"), "")
	f.Fuzz(func(t *testing.T, data []byte, password string) {
		cert, err := ParseCertificate(data, password, testNow)
		if err != nil {
			var ia *InvalidArgumentError
			if !errors.As(err, &ia) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			if strings.Contains(err.Error(), "-----BEGIN") {
				t.Fatalf("error quotes PEM: %v", err)
			}
			return
		}
		if cert.Key.RSA() == nil || len(cert.Chain) == 0 || cert.Key.RSA().N.BitLen() < MinRSABits {
			t.Fatal("accepted an incomplete certificate")
		}
		// The leaf is the key's certificate, valid now, and the thumbprints
		// are its own: Entra matches the key by them.
		leaf := cert.Leaf()
		if pub, ok := leaf.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&cert.Key.RSA().PublicKey) {
			t.Fatal("the leaf is not the certificate of the key")
		}
		if testNow.Before(leaf.NotBefore) || testNow.After(leaf.NotAfter) {
			t.Fatalf("accepted a certificate valid %v to %v at %v", leaf.NotBefore, leaf.NotAfter, testNow)
		}
		sum := sha256.Sum256(leaf.Raw)
		if cert.SHA256 != strings.ToUpper(hex.EncodeToString(sum[:])) {
			t.Fatalf("SHA-256 thumbprint %s is not the leaf's", cert.SHA256)
		}
	})
}
