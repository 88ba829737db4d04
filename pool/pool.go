// Package pool holds the Microsoft Entra applications the agent may use, per
// tenant: certificate-only credentials, their tokens, and their persistence.
// Each tenant has exactly one organization app (the one it was added with,
// used for admin operations) and any number of further apps.
package pool

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"go.uber.org/zap"
)

// State says whether an application can be used now.
type State int

// Application states.
const (
	StateReady              State = iota + 1 // has or can obtain a token
	StateFailed                              // token requests fail; retried with backoff
	StateCertificateInvalid                  // certificate expired (or not yet valid)
)

func (s State) String() string {
	switch s {
	case StateReady:
		return "ready"
	case StateFailed:
		return "failed"
	case StateCertificateInvalid:
		return "certificate invalid"
	}
	return "unknown"
}

// Config configures a Pool.
type Config struct {
	// Dir is where the pool persists (created 0700).
	Dir string
	// LoginURL is the Entra authority host, e.g. https://login.microsoftonline.com.
	LoginURL string
	// HTTPClient carries token requests (it decides which CAs are trusted).
	HTTPClient *http.Client
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// newCredential replaces azidentity in tests.
	newCredential func(tenantID, clientID string, cert *Certificate) (credential, error)
}

// Pool is the set of applications of every tenant.
type Pool struct {
	log   *zap.Logger
	cfg   Config
	store *store

	mu      sync.RWMutex
	tenants map[string][]*App // organization app first, then by client id
}

// App is one application of the pool. Its certificate and token source can be
// swapped by a certificate update while requests are in flight.
type App struct {
	TenantID string
	ClientID string

	mu           sync.RWMutex
	displayName  string
	organization bool
	cert         *Certificate
	tokens       *tokenSource
	now          func() time.Time

	tokenFailures atomic.Int64 // failed token requests, across certificates
}

// Info is a snapshot of an application, safe to return to callers: it holds
// no key material.
type Info struct {
	TenantID         string
	ClientID         string
	DisplayName      string
	Organization     bool
	ThumbprintSHA1   string
	ThumbprintSHA256 string
	NotAfter         time.Time
	ExpiresSoon      bool
	State            State
	Reason           string
	// TokenFailures counts the application's failed token requests to
	// Entra since the agent started.
	TokenFailures int64
}

// Open loads the pool persisted in cfg.Dir (an empty pool if there is none).
func Open(log *zap.Logger, cfg Config) (*Pool, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	if cfg.newCredential == nil {
		cfg.newCredential = azidentityCredential(cfg.LoginURL, cfg.HTTPClient)
	}
	st, err := openStore(cfg.Dir)
	if err != nil {
		return nil, err
	}
	p := &Pool{log: log.Named("pool"), cfg: cfg, store: st, tenants: map[string][]*App{}}
	records, err := st.load()
	if err != nil {
		return nil, err
	}
	for _, r := range records {
		app, err := p.newApp(r.tenantID, r.clientID, r.displayName, r.organization, r.cert)
		if err != nil {
			return nil, err
		}
		p.tenants[r.tenantID] = append(p.tenants[r.tenantID], app)
	}
	for t := range p.tenants {
		sortApps(p.tenants[t])
	}
	p.log.Info("pool loaded", zap.Int("tenants", len(p.tenants)), zap.Int("applications", len(records)))
	return p, nil
}

// azidentityCredential builds certificate credentials against the
// configured authority, trusting what httpClient trusts.
func azidentityCredential(loginURL string, httpClient *http.Client) func(string, string, *Certificate) (credential, error) {
	return func(tenantID, clientID string, cert *Certificate) (credential, error) {
		opts := &azidentity.ClientCertificateCredentialOptions{
			ClientOptions: azcore.ClientOptions{
				Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: strings.TrimSuffix(loginURL, "/") + "/"},
				Transport: httpClient,
			},
			// MSAL validates unknown authorities against Microsoft's public
			// instance discovery endpoint; an authority that is not one of
			// Microsoft's public clouds (a sovereign cloud reached through
			// a proxy, or the simulator) is trusted as configured instead.
			DisableInstanceDiscovery: !isPublicAuthority(loginURL),
		}
		return azidentity.NewClientCertificateCredential(tenantID, clientID, cert.Chain, cert.Key.RSA(), opts)
	}
}

// isPublicAuthority reports whether loginURL is the public Microsoft Entra
// authority, which MSAL's instance discovery knows.
func isPublicAuthority(loginURL string) bool {
	u, err := url.Parse(loginURL)
	return err == nil && strings.EqualFold(u.Hostname(), "login.microsoftonline.com")
}

func (p *Pool) newApp(tenantID, clientID, name string, org bool, cert *Certificate) (*App, error) {
	cred, err := p.cfg.newCredential(tenantID, clientID, cert)
	if err != nil {
		return nil, err
	}
	a := &App{
		TenantID: tenantID, ClientID: clientID,
		displayName: name, organization: org, cert: cert, now: p.cfg.Now,
	}
	a.tokens = newTokenSource(cred, p.cfg.Now, &a.tokenFailures)
	return a, nil
}

func sortApps(apps []*App) {
	slices.SortFunc(apps, func(a, b *App) int {
		if a.organization != b.organization {
			if a.organization {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ClientID, b.ClientID)
	})
}

// AddRequest adds an existing application.
type AddRequest struct {
	TenantID     string
	ClientID     string
	DisplayName  string
	Certificate  []byte
	Password     string
	Organization bool
}

var guid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

func checkIDs(tenantID, clientID string) error {
	if !guid.MatchString(tenantID) {
		return invalidArg("tenant_id", "%q is not a tenant id (a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47)", tenantID)
	}
	if !guid.MatchString(clientID) {
		return invalidArg("client_id", "%q is not an application (client) id (a GUID)", clientID)
	}
	return nil
}

// Add validates an application's certificate, proves it with a token from
// Entra, persists it and puts it in rotation. On any error the pool is
// unchanged.
func (p *Pool) Add(ctx context.Context, req AddRequest) (Info, error) {
	if err := checkIDs(req.TenantID, req.ClientID); err != nil {
		return Info{}, err
	}
	tenantID, clientID := strings.ToLower(req.TenantID), strings.ToLower(req.ClientID)
	cert, err := ParseCertificate(req.Certificate, req.Password, p.cfg.Now())
	if err != nil {
		return Info{}, err
	}
	name := strings.TrimSpace(req.DisplayName)
	if name == "" {
		name = clientID
	}
	if err := p.checkAdd(tenantID, clientID, req.Organization); err != nil {
		return Info{}, err
	}
	app, err := p.newApp(tenantID, clientID, name, req.Organization, cert)
	if err != nil {
		return Info{}, err
	}
	if _, err := app.tokens.Token(ctx); err != nil {
		return Info{}, &PreconditionError{Reason: "Entra refused the application: " + reasonOf(err)}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	// Checked again under the lock: another Add may have won meanwhile.
	if err := p.checkAddLocked(tenantID, clientID, req.Organization); err != nil {
		return Info{}, err
	}
	apps := append(slices.Clone(p.tenants[tenantID]), app)
	sortApps(apps)
	if err := p.store.save(p.recordsWith(tenantID, apps)); err != nil {
		return Info{}, err
	}
	p.tenants[tenantID] = apps
	p.log.Info("application added", zap.String("tenant_id", tenantID), zap.String("client_id", clientID),
		zap.Bool("organization_app", req.Organization), zap.String("thumbprint", cert.SHA1))
	return app.Info(), nil
}

func (p *Pool) checkAdd(tenantID, clientID string, org bool) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.checkAddLocked(tenantID, clientID, org)
}

func (p *Pool) checkAddLocked(tenantID, clientID string, org bool) error {
	apps := p.tenants[tenantID]
	for _, a := range apps {
		if a.ClientID == clientID {
			return fmt.Errorf("application %s of tenant %s: %w", clientID, tenantID, ErrAlreadyExists)
		}
	}
	switch {
	case len(apps) == 0 && !org:
		return &PreconditionError{Reason: "tenant " + tenantID + " has no organization app yet; add it first with organization_app set"}
	case len(apps) > 0 && org:
		return &PreconditionError{Reason: "tenant " + tenantID + " already has an organization app (" + apps[0].ClientID + "); a tenant has exactly one"}
	}
	return nil
}

// UpdateCertificate replaces an application's certificate. The new
// certificate must obtain a token before it replaces the old one, so requests
// keep flowing on the old certificate until then; on error nothing changes.
func (p *Pool) UpdateCertificate(ctx context.Context, tenantID, clientID string, certificate []byte, password string) (Info, error) {
	if err := checkIDs(tenantID, clientID); err != nil {
		return Info{}, err
	}
	tenantID, clientID = strings.ToLower(tenantID), strings.ToLower(clientID)
	app, err := p.App(tenantID, clientID)
	if err != nil {
		return Info{}, err
	}
	cert, err := ParseCertificate(certificate, password, p.cfg.Now())
	if err != nil {
		return Info{}, err
	}
	cred, err := p.cfg.newCredential(tenantID, clientID, cert)
	if err != nil {
		return Info{}, err
	}
	// A refused new certificate counts against the app too: it is a
	// failed token request of this application.
	tokens := newTokenSource(cred, p.cfg.Now, &app.tokenFailures)
	if _, err := tokens.Token(ctx); err != nil {
		return Info{}, &PreconditionError{Reason: "Entra refused the new certificate: " + reasonOf(err)}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	app.mu.Lock()
	oldCert, oldTokens := app.cert, app.tokens
	app.cert, app.tokens = cert, tokens
	app.mu.Unlock()
	if err := p.store.save(p.recordsWith(tenantID, p.tenants[tenantID])); err != nil {
		app.mu.Lock()
		app.cert, app.tokens = oldCert, oldTokens
		app.mu.Unlock()
		return Info{}, err
	}
	p.log.Info("certificate updated", zap.String("tenant_id", tenantID), zap.String("client_id", clientID),
		zap.String("old_thumbprint", oldCert.SHA1), zap.String("thumbprint", cert.SHA1))
	return app.Info(), nil
}

// Remove takes an application out of the pool. The organization app cannot
// be removed while other apps exist, nor the last usable app of a tenant
// that has running jobs (tenantBusy).
func (p *Pool) Remove(tenantID, clientID string, tenantBusy bool) error {
	if err := checkIDs(tenantID, clientID); err != nil {
		return err
	}
	tenantID, clientID = strings.ToLower(tenantID), strings.ToLower(clientID)
	p.mu.Lock()
	defer p.mu.Unlock()
	apps := p.tenants[tenantID]
	i := slices.IndexFunc(apps, func(a *App) bool { return a.ClientID == clientID })
	if i < 0 {
		return notFound(tenantID, clientID)
	}
	app := apps[i]
	if app.organization && len(apps) > 1 {
		return &PreconditionError{Reason: "the organization app cannot be removed while the tenant has other applications; remove those first"}
	}
	if tenantBusy && app.Usable() {
		others := 0
		for _, a := range apps {
			if a != app && a.Usable() {
				others++
			}
		}
		if others == 0 {
			return &PreconditionError{Reason: "this is the last usable application of a tenant with running jobs; wait for the jobs to end or cancel them"}
		}
	}
	rest := slices.Delete(slices.Clone(apps), i, i+1)
	if err := p.store.save(p.recordsWith(tenantID, rest)); err != nil {
		return err
	}
	if len(rest) == 0 {
		delete(p.tenants, tenantID)
	} else {
		p.tenants[tenantID] = rest
	}
	p.log.Info("application removed", zap.String("tenant_id", tenantID), zap.String("client_id", clientID))
	return nil
}

// App returns one application.
func (p *Pool) App(tenantID, clientID string) (*App, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, a := range p.tenants[strings.ToLower(tenantID)] {
		if a.ClientID == strings.ToLower(clientID) {
			return a, nil
		}
	}
	return nil, notFound(tenantID, clientID)
}

func notFound(tenantID, clientID string) error {
	return fmt.Errorf("application %s of tenant %s: %w", clientID, tenantID, ErrNotFound)
}

// Apps returns a tenant's applications, organization app first. The slice
// is the caller's; the apps are shared.
func (p *Pool) Apps(tenantID string) []*App {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return slices.Clone(p.tenants[strings.ToLower(tenantID)])
}

// Tenants returns the tenant ids with applications, sorted.
func (p *Pool) Tenants() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	ids := make([]string, 0, len(p.tenants))
	for id := range p.tenants {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// List returns snapshots of a tenant's applications, or of every tenant's
// when tenantID is empty.
func (p *Pool) List(tenantID string) []Info {
	tenants := []string{strings.ToLower(tenantID)}
	if tenantID == "" {
		tenants = p.Tenants()
	}
	var out []Info
	for _, t := range tenants {
		for _, a := range p.Apps(t) {
			out = append(out, a.Info())
		}
	}
	return out
}

// recordsWith returns the persistent records of every tenant, with tenantID's
// applications replaced by apps. Callers hold p.mu.
func (p *Pool) recordsWith(tenantID string, apps []*App) []record {
	var out []record
	add := func(list []*App) {
		for _, a := range list {
			a.mu.RLock()
			out = append(out, record{tenantID: a.TenantID, clientID: a.ClientID, displayName: a.displayName, organization: a.organization, cert: a.cert})
			a.mu.RUnlock()
		}
	}
	for t, list := range p.tenants {
		if t != tenantID {
			add(list)
		}
	}
	add(apps)
	return out
}

// Token returns an access token of the application for Microsoft Graph.
func (a *App) Token(ctx context.Context) (string, error) {
	a.mu.RLock()
	tokens, cert := a.tokens, a.cert
	a.mu.RUnlock()
	if now := a.now(); now.After(cert.Leaf().NotAfter) {
		return "", &TokenError{Reason: "the certificate expired on " + cert.Leaf().NotAfter.UTC().Format(time.DateOnly)}
	}
	return tokens.Token(ctx)
}

// Usable reports whether the application may be put in rotation now: its
// certificate is valid and its token requests are not failing.
func (a *App) Usable() bool {
	return a.Info().State == StateReady
}

// TokenFailures returns how many token requests of the application failed
// since the agent started.
func (a *App) TokenFailures() int64 { return a.tokenFailures.Load() }

// Organization reports whether this is the tenant's organization app.
func (a *App) Organization() bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.organization
}

// Info returns a snapshot of the application.
func (a *App) Info() Info {
	a.mu.RLock()
	cert, tokens := a.cert, a.tokens
	info := Info{
		TenantID: a.TenantID, ClientID: a.ClientID, DisplayName: a.displayName, Organization: a.organization,
		ThumbprintSHA1: cert.SHA1, ThumbprintSHA256: cert.SHA256, NotAfter: cert.Leaf().NotAfter,
		TokenFailures: a.tokenFailures.Load(),
	}
	a.mu.RUnlock()
	now := a.now()
	info.ExpiresSoon = cert.ExpiresSoon(now)
	info.State = StateReady
	switch leaf := cert.Leaf(); {
	case now.After(leaf.NotAfter):
		info.State, info.Reason = StateCertificateInvalid, "the certificate expired on "+leaf.NotAfter.UTC().Format(time.DateOnly)
	case now.Before(leaf.NotBefore):
		info.State, info.Reason = StateCertificateInvalid, "the certificate is not valid before "+leaf.NotBefore.UTC().Format(time.DateOnly)
	default:
		if failing, reason, retryAt := tokens.status(); failing {
			info.State, info.Reason = StateFailed, reason+" (next attempt "+retryAt.UTC().Format(time.RFC3339)+")"
		}
	}
	return info
}

func reasonOf(err error) string {
	if te, ok := err.(*TokenError); ok {
		return te.Reason
	}
	return err.Error()
}
