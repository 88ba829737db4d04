// Package jobs is the agent's job manager: it queues backup jobs, runs a
// bounded number at once through a Runner, tracks their progress, persists
// them so that a restart loses nothing, and lets callers watch and cancel
// them. It knows nothing of Graph or of how a backup is made.
package jobs

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// SourceKind says what a job backs up.
type SourceKind string

// Source kinds.
const (
	OneDrive       SourceKind = "onedrive"
	SharePointSite SourceKind = "sharepoint_site"
)

// Source is what a job backs up: a user's OneDrive (Ref = UPN or object id)
// or a SharePoint site (Ref = site URL or Graph site id).
type Source struct {
	Kind SourceKind `json:"kind"`
	Ref  string     `json:"ref"`
}

func (s Source) String() string { return string(s.Kind) + ":" + s.Ref }

// Mode is incremental or full.
type Mode string

// Backup modes.
const (
	Incremental Mode = "incremental"
	Full        Mode = "full"
)

// State is a job's state.
type State string

// Job states. Succeeded, PartiallySucceeded, Failed and Cancelled are final.
const (
	Queued             State = "queued"
	Running            State = "running"
	Succeeded          State = "succeeded"
	PartiallySucceeded State = "partially_succeeded"
	Failed             State = "failed"
	Cancelled          State = "cancelled"
)

// Ended reports whether s is final.
func (s State) Ended() bool {
	switch s {
	case Succeeded, PartiallySucceeded, Failed, Cancelled:
		return true
	}
	return false
}

// Spec is what a caller asks for. Two submissions with the same ID are the
// same job only if their specs are equal.
type Spec struct {
	ID       string `json:"id"`
	TenantID string `json:"tenant_id"`
	Source   Source `json:"source"`
	Mode     Mode   `json:"mode"`
}

// Progress counts a job's work.
type Progress struct {
	ItemsDiscovered   int64 `json:"items_discovered"`
	ItemsBackedUp     int64 `json:"items_backed_up"`
	ItemsFailed       int64 `json:"items_failed"`
	ItemsDeleted      int64 `json:"items_deleted"`
	BytesDownloaded   int64 `json:"bytes_downloaded"`
	BytesStored       int64 `json:"bytes_stored"`
	ThrottledRequests int64 `json:"throttled_requests"`
}

func (p *Progress) add(d Progress) {
	p.ItemsDiscovered += d.ItemsDiscovered
	p.ItemsBackedUp += d.ItemsBackedUp
	p.ItemsFailed += d.ItemsFailed
	p.ItemsDeleted += d.ItemsDeleted
	p.BytesDownloaded += d.BytesDownloaded
	p.BytesStored += d.BytesStored
	p.ThrottledRequests += d.ThrottledRequests
}

// FailedItem is an item a job could not back up.
type FailedItem struct {
	ItemID string `json:"item_id"`
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// MaxFailedItemsListed bounds the failed items a job keeps by name; the
// count in Progress.ItemsFailed is always complete.
const MaxFailedItemsListed = 1000

// Job is a job's spec and state.
type Job struct {
	Spec
	State          State        `json:"state"`
	Progress       Progress     `json:"progress"`
	Error          string       `json:"error,omitempty"`
	RestorePointID string       `json:"restore_point_id,omitempty"`
	Created        time.Time    `json:"created"`
	Started        time.Time    `json:"started,omitzero"`
	Ended          time.Time    `json:"ended,omitzero"`
	FailedItems    []FailedItem `json:"failed_items,omitempty"`
	// Attempts counts how often the job was started (restarts resume it).
	Attempts int `json:"attempts"`
}

// Errors of the job manager; the gRPC edge maps them to status codes.
var (
	ErrNotFound = errors.New("job not found")
	// ErrConflict: the job id exists with another spec.
	ErrConflict = errors.New("a job with this id exists with another spec")
	// ErrClosed: the manager is shutting down.
	ErrClosed = errors.New("the job manager is shutting down")
)

// InvalidSpecError is a spec refused for one field.
type InvalidSpecError struct{ Field, Reason string }

func (e *InvalidSpecError) Error() string { return e.Field + ": " + e.Reason }

// FieldViolation names the field and the problem.
func (e *InvalidSpecError) FieldViolation() (field, reason string) { return e.Field, e.Reason }

// QueueFullError refuses a job because the queue is full.
type QueueFullError struct {
	Queued     int
	RetryAfter time.Duration
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("the job queue is full (%d jobs waiting); retry later", e.Queued)
}

var (
	jobIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	guidPattern  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// A Graph site id: hostname,site-collection-guid,web-guid.
	siteIDPattern = regexp.MustCompile(`^[A-Za-z0-9.-]+,[0-9a-fA-F-]{36},[0-9a-fA-F-]{36}$`)
)

// normalize validates a spec and fills defaults.
func normalize(s Spec) (Spec, error) {
	if !jobIDPattern.MatchString(s.ID) {
		return s, &InvalidSpecError{"job_id", "must be 1 to 128 letters, digits, '.', '_' or '-'"}
	}
	if !guidPattern.MatchString(s.TenantID) {
		return s, &InvalidSpecError{"tenant_id", fmt.Sprintf("%q is not a tenant id (a GUID)", s.TenantID)}
	}
	s.TenantID = strings.ToLower(s.TenantID)
	s.Source.Ref = strings.TrimSpace(s.Source.Ref)
	switch s.Source.Kind {
	case OneDrive:
		if !guidPattern.MatchString(s.Source.Ref) && !strings.Contains(s.Source.Ref, "@") {
			return s, &InvalidSpecError{"onedrive.user", fmt.Sprintf("%q is neither a user principal name (alice@contoso.com) nor an object id", s.Source.Ref)}
		}
	case SharePointSite:
		if !siteIDPattern.MatchString(s.Source.Ref) {
			u, err := url.Parse(s.Source.Ref)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return s, &InvalidSpecError{"sharepoint_site.site", fmt.Sprintf("%q is neither an https site URL nor a site id (hostname,guid,guid)", s.Source.Ref)}
			}
		}
	default:
		return s, &InvalidSpecError{"source", "a source is required: onedrive or sharepoint_site"}
	}
	switch s.Mode {
	case "":
		s.Mode = Incremental
	case Incremental, Full:
	default:
		return s, &InvalidSpecError{"mode", fmt.Sprintf("unknown mode %q", s.Mode)}
	}
	return s, nil
}
