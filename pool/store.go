package pool

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/backup-proxy/backup-proxy/internal/atomicfile"
)

// Persistence. The pool lives in one directory (mode 0700):
//
//	pool.json                       applications and their public certificates
//	keys/<sha256-thumbprint>.pem    one private key per certificate, PKCS#8, mode 0600
//
// Keys are stored unencrypted with mode 0600, like SSH host keys: an
// encryption key would have to sit on the same disk with the same
// permissions, adding ceremony but no protection. Operators who need more
// protect the data directory itself (disk encryption, a dedicated user).
//
// Write order makes every crash safe: a new key file is written before
// pool.json refers to it, and an old key file is removed only after
// pool.json stopped referring to it. Key files no longer referenced (a crash
// between the two steps) are removed on load.

const stateFile = "pool.json"

type store struct{ dir string }

type record struct {
	tenantID, clientID, displayName string
	organization                    bool
	cert                            *Certificate
}

type stateJSON struct {
	Version      int       `json:"version"`
	Applications []appJSON `json:"applications"`
}

type appJSON struct {
	TenantID     string `json:"tenant_id"`
	ClientID     string `json:"client_id"`
	DisplayName  string `json:"display_name"`
	Organization bool   `json:"organization_app"`
	// CertificatePEM is the public chain, leaf first.
	CertificatePEM string `json:"certificate_pem"`
	// KeyFile is relative to the pool directory.
	KeyFile string `json:"key_file"`
}

func openStore(dir string) (*store, error) {
	if dir == "" {
		return nil, errors.New("pool: no directory configured")
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	return &store{dir: dir}, nil
}

func keyFileName(c *Certificate) string { return filepath.Join("keys", c.SHA256+".pem") }

// load reads the persisted applications. Validity periods are not checked:
// an app whose certificate expired stays listed, flagged, until updated.
func (s *store) load() ([]record, error) {
	data, err := os.ReadFile(filepath.Join(s.dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, s.removeUnreferencedKeys(nil)
	}
	if err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	var st stateJSON
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("pool: %s is damaged: %w", stateFile, err)
	}
	if st.Version != 1 {
		return nil, fmt.Errorf("pool: %s has unknown version %d", stateFile, st.Version)
	}
	var out []record
	keep := map[string]bool{}
	for _, a := range st.Applications {
		cert, err := loadCertificate(s.dir, a)
		if err != nil {
			return nil, fmt.Errorf("pool: application %s of tenant %s: %w", a.ClientID, a.TenantID, err)
		}
		keep[a.KeyFile] = true
		out = append(out, record{tenantID: a.TenantID, clientID: a.ClientID, displayName: a.DisplayName, organization: a.Organization, cert: cert})
	}
	return out, s.removeUnreferencedKeys(keep)
}

func loadCertificate(dir string, a appJSON) (*Certificate, error) {
	keyPEM, err := os.ReadFile(filepath.Join(dir, a.KeyFile))
	if err != nil {
		return nil, err
	}
	return parseCertificate(append([]byte(a.CertificatePEM), keyPEM...), "")
}

func (s *store) removeUnreferencedKeys(keep map[string]bool) error {
	entries, err := os.ReadDir(filepath.Join(s.dir, "keys"))
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	for _, e := range entries {
		name := filepath.Join("keys", e.Name())
		if !keep[name] {
			if err := os.Remove(filepath.Join(s.dir, name)); err != nil {
				return fmt.Errorf("pool: %w", err)
			}
		}
	}
	return nil
}

// save persists records: key files first, then pool.json, then removal of
// key files no longer referenced.
func (s *store) save(records []record) error {
	st := stateJSON{Version: 1, Applications: []appJSON{}}
	keep := map[string]bool{}
	for _, r := range records {
		name := keyFileName(r.cert)
		if !keep[name] {
			keyDER, err := x509.MarshalPKCS8PrivateKey(r.cert.Key.RSA())
			if err != nil {
				return fmt.Errorf("pool: encode key: %w", err)
			}
			path := filepath.Join(s.dir, name)
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
				if err := atomicfile.WriteFile(path, keyPEM, 0o600); err != nil {
					return fmt.Errorf("pool: %w", err)
				}
			}
			keep[name] = true
		}
		var chain strings.Builder
		for _, c := range r.cert.Chain {
			chain.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		}
		st.Applications = append(st.Applications, appJSON{
			TenantID: r.tenantID, ClientID: r.clientID, DisplayName: r.displayName,
			Organization: r.organization, CertificatePEM: chain.String(), KeyFile: name,
		})
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, stateFile), data, 0o600); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	return s.removeUnreferencedKeys(keep)
}
