package graphsim

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Tenant describes the generated tenant for clients and tests.
type Tenant struct {
	ID             string  `json:"tenant_id"`
	Name           string  `json:"name"`
	Domain         string  `json:"domain"`
	SharePointHost string  `json:"sharepoint_host"`
	Apps           []App   `json:"apps"`
	Users          []User  `json:"users"`
	Sites          []Site  `json:"sites"`
	Drives         []Drive `json:"drives"`
}

// App is an app registration. Credentials holds the certificates and keys
// graphsim generated for it (pre-registered apps and AddAppCertificate);
// apps created through Graph carry the client's own certificates instead.
type App struct {
	ClientID        string           `json:"client_id"`
	ObjectID        string           `json:"object_id"`
	DisplayName     string           `json:"display_name"`
	OrganizationApp bool             `json:"organization_app"`
	Roles           []string         `json:"roles"`
	Credentials     []*AppCredential `json:"-"`
}

// User is a directory user; DriveID is empty when the OneDrive is not
// provisioned.
type User struct {
	ID                string `json:"id"`
	UserPrincipalName string `json:"user_principal_name"`
	DisplayName       string `json:"display_name"`
	HasOneDrive       bool   `json:"has_onedrive"`
	DriveID           string `json:"drive_id,omitempty"`
}

// Site is a SharePoint team site with its document libraries.
type Site struct {
	ID          string   `json:"id"`
	WebURL      string   `json:"web_url"`
	Name        string   `json:"name"`
	DisplayName string   `json:"display_name"`
	DriveIDs    []string `json:"drive_ids"`
}

// Drive is a document library or a OneDrive.
type Drive struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	DriveType string `json:"drive_type"`
	WebURL    string `json:"web_url"`
	SiteID    string `json:"site_id"`
	OwnerID   string `json:"owner_id,omitempty"`
}

// Tenant returns the tenant description.
func (s *Server) Tenant() Tenant {
	t := s.tenant
	out := Tenant{ID: t.id, Name: t.name, Domain: t.domain, SharePointHost: t.spHost}
	s.dir.mu.RLock()
	s.credsMu.Lock()
	for _, a := range s.dir.apps {
		out.Apps = append(out.Apps, App{ClientID: a.clientID, ObjectID: a.objectID, DisplayName: a.displayName,
			OrganizationApp: a.organization, Roles: s.dir.roles(a), Credentials: append([]*AppCredential(nil), s.creds[a.clientID]...)})
	}
	s.credsMu.Unlock()
	s.dir.mu.RUnlock()
	for _, u := range t.users {
		x := User{ID: u.id, UserPrincipalName: u.upn, DisplayName: u.displayName, HasOneDrive: u.drive != nil}
		if u.drive != nil {
			x.DriveID = u.drive.id
		}
		out.Users = append(out.Users, x)
	}
	for _, st := range t.sites {
		x := Site{ID: st.id, WebURL: st.webURL, Name: st.name, DisplayName: st.displayName}
		for _, d := range st.libraries {
			x.DriveIDs = append(x.DriveIDs, d.id)
		}
		out.Sites = append(out.Sites, x)
	}
	for _, d := range t.drives {
		x := Drive{ID: d.id, Name: d.name, DriveType: d.driveType, WebURL: d.webURL, SiteID: d.siteID}
		if d.owner != nil {
			x.OwnerID = d.owner.id
		}
		out.Drives = append(out.Drives, x)
	}
	return out
}

// AddAppCertificate generates a new certificate valid in [notBefore,
// notAfter] and registers it on the app, as a rotation would. Expired or
// not-yet-valid certificates are allowed so tests can present them.
func (s *Server) AddAppCertificate(clientID string, notBefore, notAfter time.Time) (*AppCredential, error) {
	s.dir.mu.Lock()
	a := s.dir.byClientID[strings.ToLower(clientID)]
	s.dir.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("graphsim: unknown app %s", clientID)
	}
	cred, err := newSelfSignedAppCredential(s.opts.AppKeyBits, a.displayName, notBefore, notAfter)
	if err != nil {
		return nil, fmt.Errorf("graphsim: app %s: %w", clientID, err)
	}
	s.dir.mu.Lock()
	s.dir.addKey(a, cred.Cert, a.displayName, notBefore, notAfter)
	s.dir.mu.Unlock()
	s.credsMu.Lock()
	s.creds[a.clientID] = append(s.creds[a.clientID], cred)
	s.credsMu.Unlock()
	return cred, nil
}

// Item is the current state of a drive item, as a test oracle.
type Item struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	ParentID     string `json:"parent_id,omitempty"`
	Path         string `json:"path"`
	Folder       bool   `json:"folder"`
	Root         bool   `json:"root"`
	Size         int64  `json:"size"`
	QuickXorHash string `json:"quick_xor_hash,omitempty"`
	ETag         string `json:"etag"`
	CTag         string `json:"ctag"`
	Malware      bool   `json:"malware,omitempty"`
}

// DriveItems returns the live items of a drive (root included) with their
// quickXorHash, in change order.
func (s *Server) DriveItems(driveID string) ([]Item, error) {
	d := s.tenant.drivesByID[driveID]
	if d == nil {
		return nil, fmt.Errorf("graphsim: unknown drive %s", driveID)
	}
	s.tenant.mu.RLock()
	views := make([]itemView, 0, len(d.items))
	for _, it := range d.liveItems() {
		views = append(views, s.viewOf(d, it))
	}
	s.tenant.mu.RUnlock()
	out := make([]Item, 0, len(views))
	for _, v := range views {
		it := v.it
		x := Item{ID: it.id, Name: it.name, ParentID: it.parentID, Path: v.path, Folder: it.folder, Root: it.root,
			Size: it.size, Malware: it.malware,
			ETag: fmt.Sprintf(`"{%s},%d"`, strings.ToUpper(it.uniqueID), it.eVersion),
			CTag: fmt.Sprintf(`"c:{%s},%d"`, strings.ToUpper(it.uniqueID), it.cVersion)}
		if !it.folder {
			x.QuickXorHash = it.hash.get(it.content())
		}
		out = append(out, x)
	}
	return out, nil
}

// ItemContent streams the current bytes of a file, as a test oracle.
func (s *Server) ItemContent(driveID, itemID string) (io.Reader, int64, error) {
	d := s.tenant.drivesByID[driveID]
	if d == nil {
		return nil, 0, fmt.Errorf("graphsim: unknown drive %s", driveID)
	}
	s.tenant.mu.RLock()
	it := d.items[itemID]
	s.tenant.mu.RUnlock()
	if it == nil || it.deleted || it.folder {
		return nil, 0, fmt.Errorf("graphsim: no file %s in drive %s", itemID, driveID)
	}
	c := it.content()
	return c.reader(0, c.size), c.size, nil
}

// stateFile is the tenant.json cmd/graphsim writes for scripts.
type stateFile struct {
	TenantID string      `json:"tenant_id"`
	GraphURL string      `json:"graph_url"`
	LoginURL string      `json:"login_url"`
	CAFile   string      `json:"ca_file"`
	Apps     []stateApp  `json:"apps"`
	Users    []stateUser `json:"users"`
	Sites    []stateSite `json:"sites"`
}

type stateApp struct {
	ClientID        string `json:"client_id"`
	DisplayName     string `json:"display_name"`
	OrganizationApp bool   `json:"organization_app"`
	CertFile        string `json:"cert_file"`
	KeyFile         string `json:"key_file"`
}

type stateUser struct {
	ID                string `json:"id"`
	UserPrincipalName string `json:"user_principal_name"`
	HasOneDrive       bool   `json:"has_onedrive"`
}

type stateSite struct {
	ID     string `json:"id"`
	WebURL string `json:"web_url"`
	Name   string `json:"name"`
}

// WriteState writes ca.pem, one certificate and key PEM per pre-registered
// app and tenant.json into dir (created if missing). Paths in tenant.json
// are absolute. Every file is written atomically.
func (s *Server) WriteState(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("graphsim: state dir %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return fmt.Errorf("graphsim: create state dir: %w", err)
	}
	caFile := filepath.Join(abs, "ca.pem")
	if err := writeFileAtomic(caFile, s.ca.certPEM, 0o644); err != nil {
		return err
	}
	t := s.Tenant()
	st := stateFile{TenantID: t.ID, GraphURL: s.GraphURL(), LoginURL: s.LoginURL(), CAFile: caFile,
		Apps: []stateApp{}, Users: []stateUser{}, Sites: []stateSite{}}
	for i, a := range t.Apps {
		if len(a.Credentials) == 0 {
			continue
		}
		cred := a.Credentials[0]
		certFile := filepath.Join(abs, fmt.Sprintf("app-%d.pem", i+1))
		keyFile := filepath.Join(abs, fmt.Sprintf("app-%d.key", i+1))
		if err := writeFileAtomic(certFile, cred.CertPEM, 0o644); err != nil {
			return err
		}
		if err := writeFileAtomic(keyFile, cred.KeyPEM, 0o600); err != nil {
			return err
		}
		st.Apps = append(st.Apps, stateApp{ClientID: a.ClientID, DisplayName: a.DisplayName,
			OrganizationApp: a.OrganizationApp, CertFile: certFile, KeyFile: keyFile})
	}
	for _, u := range t.Users {
		st.Users = append(st.Users, stateUser{ID: u.ID, UserPrincipalName: u.UserPrincipalName, HasOneDrive: u.HasOneDrive})
	}
	for _, x := range t.Sites {
		st.Sites = append(st.Sites, stateSite{ID: x.ID, WebURL: x.WebURL, Name: x.Name})
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("graphsim: encode tenant.json: %w", err)
	}
	return writeFileAtomic(filepath.Join(abs, "tenant.json"), append(b, '\n'), 0o644)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("graphsim: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("graphsim: write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("graphsim: chmod %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("graphsim: close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("graphsim: rename %s: %w", path, err)
	}
	return nil
}
