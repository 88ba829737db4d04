package graphsim

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Regime says how the apps of the tenant share the per-app budget.
type Regime string

const (
	// RegimePerApp gives every app its own RU/min and RU/24h budget.
	RegimePerApp Regime = "per-app"
	// RegimeShared makes all apps of the tenant draw on one app budget, as
	// Microsoft enforces since 2026-03 for apps doing the same workload.
	RegimeShared Regime = "shared"
)

// Limits are the SharePoint/OneDrive resource-unit budgets.
type Limits struct {
	AppPerMinute  int // RU per app per tenant per minute
	AppPer24h     int // RU per app per tenant per 24 hours
	TenantPer5Min int // RU per tenant per 5 minutes, all apps together
}

// LimitsForLicenses returns Microsoft's published limits for a tenant with
// the given number of licences (microsoft-365-facts.md section 1). The
// scheduler keeps its own copy of this table on purpose: the simulator
// stands for Microsoft, and must not inherit a mistake in the product's
// configuration.
func LimitsForLicenses(licenses int) Limits {
	switch {
	case licenses <= 1000:
		return Limits{1250, 1_200_000, 18_750}
	case licenses <= 5000:
		return Limits{2500, 2_400_000, 37_500}
	case licenses <= 15000:
		return Limits{3750, 3_600_000, 56_250}
	case licenses <= 50000:
		return Limits{5000, 4_800_000, 75_000}
	default:
		return Limits{6250, 6_000_000, 93_750}
	}
}

// SizeClass is one bucket of the file size mix: a Weight share of files get
// a size drawn log-uniformly from [Min, Max].
type SizeClass struct {
	Weight   float64
	Min, Max int64
}

// DefaultSizeMix resembles a document library: mostly small office files,
// some photos and PDFs of a few MB, rare large media files.
var DefaultSizeMix = []SizeClass{
	{Weight: 0.02, Min: 0, Max: 0},
	{Weight: 0.50, Min: 1 << 10, Max: 256 << 10},
	{Weight: 0.33, Min: 256 << 10, Max: 4 << 20},
	{Weight: 0.13, Min: 4 << 20, Max: 32 << 20},
	{Weight: 0.02, Min: 32 << 20, Max: 128 << 20},
}

// Faults injects failures on demand. Rates are probabilities in [0, 1]
// applied per request (or per generated object where stated).
type Faults struct {
	TransientErrorRate     float64       // Graph requests answered 500/502/503/504 without Retry-After
	ConnectionResetRate    float64       // requests (and downloads, mid-body) aborted abruptly
	SlowResponseRate       float64       // requests delayed by SlowResponseDelay (real time)
	SlowResponseDelay      time.Duration // default 2s
	ExpiredDownloadURLRate float64       // download URLs handed out already expired
	DeadDeltaTokenRate     float64       // delta requests with a token answered 410 resync
	UnprovisionedOneDrives float64       // share of users without a OneDrive (generation time); default 0.1, negative for none
	MalwareRate            float64       // share of files flagged as malware (generation time)
}

// Options configure a simulated tenant and its server.
type Options struct {
	Seed                 uint64
	Users                int         // default 10; negative for none
	Sites                int         // default 5; negative for none
	LibrariesPerSite     int         // document libraries per site, default 1
	FilesPerDrive        int         // default 100
	FoldersPerDrive      int         // default FilesPerDrive/8
	SizeMix              []SizeClass // default DefaultSizeMix
	MaxFileSize          int64       // if > 0, caps every generated file size
	Apps                 int         // pre-registered apps, the first is the organization app; default 1
	ListItemsPerList     int         // items in each site's generic list, default 10
	AppKeyBits           int         // RSA key size of generated app certificates, default 2048
	AppCertificateExpiry time.Duration

	Licenses   int     // selects the limits tier, default 1000
	Limits     *Limits // overrides the tier when set
	Regime     Regime  // default RegimePerApp
	NoThrottle bool    // meter but never throttle (and send no RateLimit headers)
	// ProductionLoad is the simulated production users' traffic on the
	// tenant bucket, in RU per simulated minute.
	ProductionLoad float64
	// Throttle503Rate is the share of throttled responses sent as 503
	// instead of 429 (both carry Retry-After). Default 0.1, negative for none.
	Throttle503Rate float64
	// ViolationGrace forgives requests that arrive this soon (real time)
	// after a throttling response: they were already in flight. Default 500ms.
	ViolationGrace time.Duration
	// BlockAfterViolations is how many Retry-After violations in a row get
	// the app blocked with persistent 503s. Default 10.
	BlockAfterViolations int
	// BlockDuration is how long (simulated) a blocked app stays blocked.
	// Default 15 minutes.
	BlockDuration time.Duration

	// Clock is the time source; default the real clock.
	Clock Clock
	// TimeScale makes throttling windows and Retry-After run TimeScale times
	// faster than Clock (simulated seconds per real second). Tokens, download
	// URLs and client assertions stay on Clock because real clients compute
	// their expiry in real time. Default 1.
	TimeScale float64

	TokenLifetime       time.Duration // fixed bearer-token lifetime; default random 60–90 min like Entra
	DownloadURLLifetime time.Duration // default 1h
	AssertionSkew       time.Duration // accepted clock skew on nbf/exp, default 5 min
	DeltaTokenMaxAge    time.Duration // delta tokens older than this (Clock time) give 410; 0 = never
	Latency             time.Duration // added to every Graph response (real time)

	Faults Faults

	// RecordCredentials keeps every access token, client assertion and
	// download tempauth the server issues or receives, for tests that check
	// a client leaks none (IssuedCredentials). The record grows with every
	// token and listed file and is never trimmed: for tests, not for
	// benchmarks or long runs.
	RecordCredentials bool

	// Listen is the TCP address, default "127.0.0.1:0".
	Listen string
	Logger *zap.Logger
}

func (o *Options) withDefaults() (Options, error) {
	c := *o
	// Zero means the default; a negative count means none.
	switch {
	case c.Users == 0:
		c.Users = 10
	case c.Users < 0:
		c.Users = 0
	}
	switch {
	case c.Sites == 0:
		c.Sites = 5
	case c.Sites < 0:
		c.Sites = 0
	}
	if c.LibrariesPerSite == 0 {
		c.LibrariesPerSite = 1
	}
	if c.FilesPerDrive == 0 {
		c.FilesPerDrive = 100
	}
	if c.FoldersPerDrive == 0 {
		c.FoldersPerDrive = c.FilesPerDrive / 8
	}
	if len(c.SizeMix) == 0 {
		c.SizeMix = DefaultSizeMix
	}
	if c.Apps == 0 {
		c.Apps = 1
	}
	if c.ListItemsPerList == 0 {
		c.ListItemsPerList = 10
	}
	if c.AppKeyBits == 0 {
		c.AppKeyBits = 2048
	}
	if c.AppCertificateExpiry == 0 {
		c.AppCertificateExpiry = 365 * 24 * time.Hour
	}
	if c.Licenses == 0 {
		c.Licenses = 1000
	}
	if c.Regime == "" {
		c.Regime = RegimePerApp
	}
	if c.Throttle503Rate == 0 {
		c.Throttle503Rate = 0.1
	}
	if c.Throttle503Rate < 0 {
		c.Throttle503Rate = 0
	}
	if c.ViolationGrace == 0 {
		c.ViolationGrace = 500 * time.Millisecond
	}
	if c.BlockAfterViolations == 0 {
		c.BlockAfterViolations = 10
	}
	if c.BlockDuration == 0 {
		c.BlockDuration = 15 * time.Minute
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.TimeScale == 0 {
		c.TimeScale = 1
	}
	if c.DownloadURLLifetime == 0 {
		c.DownloadURLLifetime = time.Hour
	}
	if c.AssertionSkew == 0 {
		c.AssertionSkew = 5 * time.Minute
	}
	if c.Faults.SlowResponseDelay == 0 {
		c.Faults.SlowResponseDelay = 2 * time.Second
	}
	if c.Faults.UnprovisionedOneDrives == 0 {
		c.Faults.UnprovisionedOneDrives = 0.1
	}
	if c.Faults.UnprovisionedOneDrives < 0 {
		c.Faults.UnprovisionedOneDrives = 0
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	switch {
	case c.FilesPerDrive < 0, c.FoldersPerDrive < 0, c.LibrariesPerSite < 0, c.Apps < 0:
		return c, errors.New("graphsim: counts must not be negative")
	case c.TimeScale < 0:
		return c, errors.New("graphsim: TimeScale must be positive")
	case c.Regime != RegimePerApp && c.Regime != RegimeShared:
		return c, fmt.Errorf("graphsim: unknown regime %q (want %q or %q)", c.Regime, RegimePerApp, RegimeShared)
	}
	return c, nil
}
