package pool

import (
	"bytes"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"software.sslmate.com/src/go-pkcs12"
)

// Import limits and thresholds.
const (
	// MaxCertificateBytes bounds an imported certificate bundle. Real bundles
	// are a few KiB; anything near this is not a certificate.
	MaxCertificateBytes = 1 << 20
	// MinRSABits is the smallest RSA key accepted (Entra's own minimum).
	MinRSABits = 2048
	// ExpiryWarning is how long before expiry a certificate is flagged.
	ExpiryWarning = 30 * 24 * time.Hour
)

// Certificate is a validated application certificate with its private key.
// The key is held in a PrivateKey, which never prints.
type Certificate struct {
	// Chain is the leaf certificate first, then any intermediates supplied.
	Chain []*x509.Certificate
	// Key is the leaf's private key.
	Key PrivateKey
	// SHA1 is the leaf's SHA-1 thumbprint, upper-case hex (as the Entra portal shows it).
	SHA1 string
	// SHA256 is the leaf's SHA-256 thumbprint, upper-case hex.
	SHA256 string
}

// Leaf returns the certificate whose key this is.
func (c *Certificate) Leaf() *x509.Certificate { return c.Chain[0] }

// ExpiresSoon reports whether the certificate expires within ExpiryWarning of now.
func (c *Certificate) ExpiresSoon(now time.Time) bool {
	return c.Leaf().NotAfter.Sub(now) < ExpiryWarning
}

// PrivateKey holds an RSA private key and redacts it from every formatted
// form: fmt verbs, JSON and text marshalling. Structs that hold key material
// hold it in a PrivateKey, so no %v of them can leak it.
type PrivateKey struct{ key *rsa.PrivateKey }

// RSA returns the key for signing.
func (k PrivateKey) RSA() *rsa.PrivateKey { return k.key }

const redacted = "[REDACTED]"

// String implements fmt.Stringer.
func (PrivateKey) String() string { return redacted }

// GoString implements fmt.GoStringer.
func (PrivateKey) GoString() string { return redacted }

// Format implements fmt.Formatter so every verb (%v, %+v, %#v, %s, %x, ...) redacts.
func (PrivateKey) Format(f fmt.State, _ rune) { fmt.Fprint(f, redacted) }

// MarshalText implements encoding.TextMarshaler (used by JSON and zap).
func (PrivateKey) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// ParseCertificate imports a certificate with its private key from PEM
// (certificate plus a PKCS#8 or PKCS#1 RSA key, in any order) or PKCS#12
// (with password), and validates it at time now. Every error is an
// *InvalidArgumentError worded for an operator and free of key material.
func ParseCertificate(data []byte, password string, now time.Time) (*Certificate, error) {
	cert, err := parseCertificate(data, password)
	if err != nil {
		return nil, err
	}
	leaf := cert.Leaf()
	if now.Before(leaf.NotBefore) {
		return nil, invalidCert("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.DateOnly))
	}
	if now.After(leaf.NotAfter) {
		return nil, invalidCert("the certificate expired on %s", leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	return cert, nil
}

// parseCertificate is ParseCertificate without the validity period check.
func parseCertificate(data []byte, password string) (*Certificate, error) {
	switch {
	case len(data) == 0:
		return nil, invalidCert("the certificate is empty")
	case len(data) > MaxCertificateBytes:
		return nil, invalidCert("the certificate is %d bytes; at most %d are accepted", len(data), MaxCertificateBytes)
	}
	var (
		chain []*x509.Certificate
		key   any
		err   error
	)
	if bytes.Contains(data, []byte("-----BEGIN")) {
		chain, key, err = parsePEM(data)
	} else if looksLikeSecret(data) {
		return nil, invalidCert("this looks like a client secret; backup-proxy accepts only certificates (PEM or PKCS#12) with their private key")
	} else {
		chain, key, err = parsePKCS12(data, password)
	}
	if err != nil {
		return nil, err
	}
	return check(chain, key)
}

func parsePEM(data []byte) ([]*x509.Certificate, any, error) {
	var (
		chain []*x509.Certificate
		keys  []any
	)
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		//nolint:staticcheck // detecting legacy encryption is the point: it is refused
		if x509.IsEncryptedPEMBlock(block) {
			return nil, nil, invalidCert("PEM block %d (%s) is encrypted with legacy PEM encryption (RFC 1423), which is insecure and not supported; export the certificate as PKCS#12 with a password instead", n, block.Type)
		}
		switch block.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, nil, invalidCert("PEM block %d is not a valid X.509 certificate", n)
			}
			chain = append(chain, c)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, nil, invalidCert("PEM block %d is not a valid PKCS#8 private key", n)
			}
			keys = append(keys, k)
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
			if err != nil {
				return nil, nil, invalidCert("PEM block %d is not a valid PKCS#1 RSA private key", n)
			}
			keys = append(keys, k)
		case "ENCRYPTED PRIVATE KEY":
			return nil, nil, invalidCert("PEM block %d is an encrypted PKCS#8 key; give the key unencrypted in PEM, or the whole bundle as PKCS#12 with a password", n)
		case "EC PRIVATE KEY":
			return nil, nil, invalidCert("PEM block %d is an EC key; Entra client certificates must be RSA", n)
		default:
			return nil, nil, invalidCert("PEM block %d has unexpected type %q; give a CERTIFICATE and its PRIVATE KEY", n, block.Type)
		}
	}
	if len(chain) == 0 {
		return nil, nil, invalidCert("no certificate found: the PEM holds no CERTIFICATE block")
	}
	switch len(keys) {
	case 0:
		return nil, nil, invalidCert("no private key found: give the certificate together with its private key")
	case 1:
	default:
		return nil, nil, invalidCert("the PEM holds %d private keys; give exactly one", len(keys))
	}
	return chain, keys[0], nil
}

func parsePKCS12(data []byte, password string) ([]*x509.Certificate, any, error) {
	key, leaf, cas, err := pkcs12.DecodeChain(data, password)
	switch {
	case errors.Is(err, pkcs12.ErrIncorrectPassword):
		return nil, nil, invalidArg("certificate_password", "the PKCS#12 password is wrong")
	case err != nil:
		return nil, nil, invalidCert("not a certificate: neither PEM nor a readable PKCS#12 file")
	}
	return append([]*x509.Certificate{leaf}, cas...), key, nil
}

// looksLikeSecret recognises short printable strings: client secrets are
// 34-44 printable characters, a certificate never is.
func looksLikeSecret(data []byte) bool {
	s := strings.TrimSpace(string(data))
	if len(s) == 0 || len(s) > 256 {
		return false
	}
	for _, r := range s {
		if r > unicode.MaxASCII || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// check validates the key and its match with the chain, and computes the thumbprints.
func check(chain []*x509.Certificate, key any) (*Certificate, error) {
	rsaKey, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, invalidCert("the private key is %T; Entra client certificates must be RSA", key)
	}
	// The leaf is the certificate of this key, wherever it stands in the file.
	leafAt := -1
	for i, c := range chain {
		if pub, ok := c.PublicKey.(*rsa.PublicKey); ok && pub.Equal(&rsaKey.PublicKey) {
			leafAt = i
			break
		}
	}
	if leafAt < 0 {
		return nil, invalidCert("the private key does not match the certificate")
	}
	chain[0], chain[leafAt] = chain[leafAt], chain[0]
	leaf := chain[0]
	if bits := rsaKey.N.BitLen(); bits < MinRSABits {
		return nil, invalidCert("the RSA key has %d bits; at least %d are required", bits, MinRSABits)
	}
	if err := rsaKey.Validate(); err != nil {
		return nil, invalidCert("the RSA private key is inconsistent")
	}
	sum1 := sha1.Sum(leaf.Raw)
	sum256 := sha256.Sum256(leaf.Raw)
	return &Certificate{
		Chain:  chain,
		Key:    PrivateKey{key: rsaKey},
		SHA1:   strings.ToUpper(hex.EncodeToString(sum1[:])),
		SHA256: strings.ToUpper(hex.EncodeToString(sum256[:])),
	}, nil
}

func invalidCert(format string, args ...any) error {
	return invalidArg("certificate", format, args...)
}
