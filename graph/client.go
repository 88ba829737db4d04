// Package graph is the agent's access to Microsoft Graph: msgraph-sdk-go for
// metadata (users' drives, sites, document libraries, lists, delta pages,
// applications) and plain streamed HTTP for file content. Every request goes
// through the http.Client it is given, which is the tenant's scheduler: the
// scheduler picks the app, attaches its token, paces and retries. So the
// SDK's request adapter gets no authentication provider and none of kiota's
// default middleware (its RetryHandler would retry behind the scheduler's
// back, and the middleware order comes from a Go map).
package graph

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	absauth "github.com/microsoft/kiota-abstractions-go/authentication"
	msgraph "github.com/microsoftgraph/msgraph-sdk-go"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/models/odataerrors"
	"github.com/microsoftgraph/msgraph-sdk-go/sites"
)

// Client reads one tenant through Microsoft Graph.
type Client struct {
	sdk     *msgraph.GraphServiceClient
	adapter *msgraph.GraphRequestAdapter
	http    *http.Client
	base    string // e.g. https://graph.microsoft.com/v1.0
}

// New returns a client for the Graph at graphURL (without version, e.g.
// https://graph.microsoft.com) that sends every request through hc.
func New(hc *http.Client, graphURL string) (*Client, error) {
	adapter, err := msgraph.NewGraphRequestAdapterWithParseNodeFactoryAndSerializationWriterFactoryAndHttpClient(
		&absauth.AnonymousAuthenticationProvider{}, nil, nil, hc)
	if err != nil {
		return nil, fmt.Errorf("graph: %w", err)
	}
	base := strings.TrimSuffix(graphURL, "/") + "/v1.0"
	adapter.SetBaseUrl(base)
	return &Client{sdk: msgraph.NewGraphServiceClient(adapter), adapter: adapter, http: hc, base: base}, nil
}

// Errors a backup must tell apart.
var (
	// ErrNotFound: the user, site, drive or item does not exist (any more).
	ErrNotFound = errors.New("not found in Microsoft 365")
	// ErrNoOneDrive: the user exists but their OneDrive was never provisioned.
	ErrNoOneDrive = errors.New("the user's OneDrive is not provisioned")
	// ErrDownloadURLExpired: the pre-authenticated download URL expired; ask again.
	ErrDownloadURLExpired = errors.New("download URL expired")
)

// ResyncError is Graph's 410 for a delta token it no longer accepts: the
// drive must be enumerated again from Location.
type ResyncError struct {
	Code     string // resyncChangesApplyDifferences or resyncChangesUploadDifferences
	Location string
}

func (e *ResyncError) Error() string {
	return "delta token expired (" + e.Code + "): full resync needed"
}

// Drive is a document library or a OneDrive.
type Drive struct {
	ID     string
	Name   string
	Type   string // documentLibrary, business, personal
	WebURL string
}

// Site is a SharePoint site.
type Site struct {
	ID     string
	Name   string
	WebURL string
}

// UserDrive returns a user's OneDrive. user is a UPN or an object id.
func (c *Client) UserDrive(ctx context.Context, user string) (Drive, error) {
	d, err := sdkCall("drive of user", func() (models.Driveable, error) { return c.sdk.Users().ByUserId(user).Drive().Get(ctx, nil) })
	if err != nil {
		err = mapError(err)
		if errors.Is(err, ErrNotFound) && strings.Contains(strings.ToLower(err.Error()), "mysite") {
			return Drive{}, fmt.Errorf("user %s: %w", user, ErrNoOneDrive)
		}
		return Drive{}, fmt.Errorf("user %s drive: %w", user, err)
	}
	return driveOf(d), nil
}

// ResolveSite finds a site by Graph id (hostname,guid,guid) or by URL.
func (c *Client) ResolveSite(ctx context.Context, ref string) (Site, error) {
	raw := c.base + "/sites/" + url.PathEscape(ref)
	if u, err := url.Parse(ref); err == nil && u.Scheme == "https" && u.Host != "" {
		// GET /sites/{hostname}:/{server-relative-path}
		path := strings.TrimSuffix(u.EscapedPath(), "/")
		if path == "" {
			raw = c.base + "/sites/" + u.Host
		} else {
			raw = c.base + "/sites/" + u.Host + ":" + path
		}
	}
	s, err := sdkCall("site", func() (models.Siteable, error) { return c.sdk.Sites().BySiteId("x").WithUrl(raw).Get(ctx, nil) })
	if err != nil {
		return Site{}, fmt.Errorf("site %s: %w", ref, mapError(err))
	}
	return Site{ID: deref(s.GetId()), Name: deref(s.GetName()), WebURL: deref(s.GetWebUrl())}, nil
}

// SiteDrives lists a site's document libraries.
func (c *Client) SiteDrives(ctx context.Context, siteID string) ([]Drive, error) {
	var out []Drive
	b := c.sdk.Sites().BySiteId(siteID).Drives()
	get := func(b *sites.ItemDrivesRequestBuilder) (models.DriveCollectionResponseable, error) {
		return sdkCall("drives of site", func() (models.DriveCollectionResponseable, error) { return b.Get(ctx, nil) })
	}
	page, err := get(b)
	for {
		if err != nil {
			return nil, fmt.Errorf("drives of site %s: %w", siteID, mapError(err))
		}
		for _, d := range page.GetValue() {
			if d == nil {
				return nil, fmt.Errorf("drives of site %s: %w", siteID, errNullEntry)
			}
			out = append(out, driveOf(d))
		}
		next := deref(page.GetOdataNextLink())
		if next == "" {
			return out, nil
		}
		page, err = get(b.WithUrl(next))
	}
}

func driveOf(d models.Driveable) Drive {
	return Drive{ID: deref(d.GetId()), Name: deref(d.GetName()), Type: deref(d.GetDriveType()), WebURL: deref(d.GetWebUrl())}
}

// mapError turns SDK errors into this package's sentinels where one fits,
// keeping Graph's code and message.
func mapError(err error) error {
	var oe *odataerrors.ODataError
	if !errors.As(err, &oe) {
		return err
	}
	code, msg := "", ""
	if main := oe.GetErrorEscaped(); main != nil {
		code, msg = deref(main.GetCode()), deref(main.GetMessage())
	}
	desc := fmt.Sprintf("%d %s: %s", oe.ResponseStatusCode, code, msg)
	switch oe.ResponseStatusCode {
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w", desc, ErrNotFound)
	case http.StatusGone:
		loc := ""
		if h := oe.GetResponseHeaders(); h != nil {
			if v := h.Get("Location"); len(v) > 0 {
				loc = v[0]
			}
		}
		return &ResyncError{Code: code, Location: loc}
	}
	return errors.New("graph: " + desc)
}

// sdkCall runs an SDK request and turns a panic inside it, or no result,
// into an error: msgraph-sdk-go's JSON parse nodes panic on some bodies (a
// bare null where an object belongs) and return no object for an empty one,
// and a malformed answer must fail the job, not crash the agent.
func sdkCall[T any](what string, fn func() (T, error)) (res T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			res, err = zero, fmt.Errorf("graph: %s: unreadable response (%v)", what, r)
		}
	}()
	res, err = fn()
	if err == nil && any(res) == nil {
		err = fmt.Errorf("graph: %s: empty response", what)
	}
	return res, err
}

// errNullEntry: a collection holds a null where an object belongs.
var errNullEntry = errors.New("graph: a null entry in a collection")

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func derefTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}
