// Package graphsim is a faithful simulator of the parts of Microsoft Graph
// and the Entra ID token endpoint that a SharePoint Online / OneDrive for
// Business backup uses: sites, drives, delta, downloads, lists, users,
// app registrations, $batch, and SharePoint's resource-unit throttling.
//
// graphsim.New starts an HTTPS server on loopback with its own CA and a
// tenant generated deterministically from a seed; tests talk to it with real
// clients (azidentity, msgraph-sdk-go) that trust the CA.
package graphsim

import (
	cryptorand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Server is a running simulator.
type Server struct {
	opts     Options
	clock    Clock // credentials, timestamps
	sim      Clock // throttling windows (clock × TimeScale)
	log      *zap.Logger
	ca       *authority
	ln       net.Listener
	srv      *http.Server
	host     string // host:port
	baseURL  string // https://host:port
	tenant   *tenant
	dir      *directory
	creds    map[string][]*AppCredential // client id → credentials graphsim generated
	credsMu  sync.Mutex
	tokens   tokenStore
	jtis     jtiStore
	throttle *throttler
	stats    *statsStore
	urlKey   []byte
	issued   issuedLog

	rngMu sync.Mutex
	rng   *rand.Rand // faults and token lifetimes

	tokenCount atomic.Uint64
	closeOnce  sync.Once
	closeErr   error
}

// New generates the tenant described by opts and starts serving it over
// HTTPS. Call Close when done.
func New(opts Options) (*Server, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:   o,
		clock:  o.Clock,
		sim:    newScaledClock(o.Clock, o.TimeScale),
		log:    o.Logger.Named("graphsim"),
		creds:  map[string][]*AppCredential{},
		rng:    rand.New(rand.NewPCG(o.Seed, 0x6661756c7473)),
		urlKey: make([]byte, 32),
		issued: issuedLog{on: o.RecordCredentials},
	}
	if _, err := cryptorand.Read(s.urlKey); err != nil {
		return nil, fmt.Errorf("graphsim: download URL key: %w", err)
	}
	now := s.clock.Now()
	s.tenant = generateTenant(o)
	s.dir = newDirectory(o.Seed)
	s.throttle = newThrottler(o, s.sim)
	s.stats = newStatsStore()

	s.dir.mu.Lock()
	for i := range o.Apps {
		name, org, roles := fmt.Sprintf("backup-proxy app %d", i+1), i == 0, backupRoles
		if org {
			name, roles = "backup-proxy organization app", orgRoles
		}
		app := s.dir.register(name, org, now, roles)
		cred, err := newSelfSignedAppCredential(o.AppKeyBits, name, now.Add(-time.Hour), now.Add(o.AppCertificateExpiry))
		if err != nil {
			s.dir.mu.Unlock()
			return nil, fmt.Errorf("graphsim: app %d: %w", i+1, err)
		}
		s.dir.addKey(app, cred.Cert, name, cred.Cert.NotBefore, cred.Cert.NotAfter)
		s.creds[app.clientID] = append(s.creds[app.clientID], cred)
		s.stats.app(app.clientID)
	}
	s.dir.mu.Unlock()

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("graphsim: listen on %s: %w", o.Listen, err)
	}
	s.ln = ln
	s.host = ln.Addr().String()
	s.baseURL = "https://" + s.host
	ca, err := newAuthority(now)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("graphsim: %w", err)
	}
	s.ca = ca
	hostOnly, _, _ := net.SplitHostPort(s.host)
	cert, err := ca.serverCertificate(now, hostOnly)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("graphsim: %w", err)
	}
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	go func() {
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("serve", zap.Error(err))
		}
	}()
	s.log.Info("listening", zap.String("url", s.baseURL), zap.String("tenant", s.tenant.id))
	return s, nil
}

// Close stops the server at once, closing every connection (in-flight
// requests are cut, as a simulator may).
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.srv.Close() })
	return s.closeErr
}

// URL is the server's base URL, https://127.0.0.1:PORT.
func (s *Server) URL() string { return s.baseURL }

// GraphURL is the Graph base URL without the version suffix (like
// https://graph.microsoft.com); append "/v1.0".
func (s *Server) GraphURL() string { return s.baseURL }

// LoginURL is the authority host (like https://login.microsoftonline.com).
func (s *Server) LoginURL() string { return s.baseURL }

// TokenURL is the tenant's v2.0 token endpoint.
func (s *Server) TokenURL() string { return s.baseURL + "/" + s.tenant.id + "/oauth2/v2.0/token" }

// Addr is the listener's host:port.
func (s *Server) Addr() string { return s.host }

// CACertPEM is the PEM of the CA that signed the server certificate.
func (s *Server) CACertPEM() []byte { return append([]byte(nil), s.ca.certPEM...) }

// CertPool returns a pool holding graphsim's CA.
func (s *Server) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.ca.cert)
	return p
}

// Transport returns a new HTTP transport that trusts graphsim's CA.
func (s *Server) Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: s.CertPool(), MinVersion: tls.VersionTLS12}
	t.MaxIdleConnsPerHost = 64
	return t
}

// HTTPClient returns a new client that trusts graphsim's CA.
func (s *Server) HTTPClient() *http.Client {
	return &http.Client{Transport: s.Transport()}
}

// Clock returns the clock the server reads (Options.Clock or the real one).
func (s *Server) Clock() Clock { return s.clock }

// ServeHTTP routes every request: Entra, Graph, download URLs, control.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(p, "/v1.0/") || p == "/v1.0":
		s.serveGraph(w, r)
	case p == downloadPath:
		s.serveDownload(w, r)
	case strings.HasPrefix(p, "/_sim/"):
		s.serveControl(w, r)
	case p == "/common/discovery/instance":
		s.handleInstanceDiscovery(w, r)
	default:
		segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
		switch {
		case len(segs) == 4 && segs[1] == "v2.0" && segs[2] == ".well-known" && segs[3] == "openid-configuration":
			s.handleOpenIDConfiguration(w, r, segs[0])
		case len(segs) == 4 && segs[1] == "oauth2" && segs[2] == "v2.0" && segs[3] == "token":
			s.handleToken(w, r, segs[0])
		default:
			http.NotFound(w, r)
		}
	}
}

// writeJSON writes v with the given status and an exact Content-Length.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "graphsim: encode response: "+err.Error(), 500)
		return
	}
	h := w.Header()
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", "application/json; charset=utf-8")
	}
	h.Set("Content-Length", fmt.Sprint(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (s *Server) randFloat() float64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Float64()
}

func (s *Server) randIntN(n int) int {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.IntN(n)
}
