package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backup-proxy/backup-proxy/pool"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// TenantJobs reports whether a tenant has running jobs.
type TenantJobs interface {
	RunningJobs(tenantID string) int
}

// Registrar registers new applications in a tenant's Entra.
type Registrar interface {
	RegisterApplication(ctx context.Context, tenantID, displayName string, cert *x509.Certificate) (clientID string, err error)
}

// SchedulerStats reports the live statistics of a tenant's scheduler.
type SchedulerStats interface {
	TenantStats(tenantID string) (scheduler.TenantStats, bool)
}

// PoolService implements PoolService over a pool.Pool.
type PoolService struct {
	pb.UnimplementedPoolServiceServer
	pool      *pool.Pool
	jobs      TenantJobs     // nil while no job manager runs
	registrar Registrar      // nil: CreateApplication is unavailable
	stats     SchedulerStats // nil: no live statistics
	now       func() time.Time
}

// NewPoolService returns the PoolService implementation. jobs, registrar
// and stats may be nil when the agent runs without them.
func NewPoolService(p *pool.Pool, jobs TenantJobs, registrar Registrar, stats SchedulerStats) *PoolService {
	return &PoolService{pool: p, jobs: jobs, registrar: registrar, stats: stats, now: time.Now}
}

// Limits of CreateApplication.
const (
	maxCreateCount = 10
	// createdCertValidity is how long generated certificates are valid;
	// the pool flags them 30 days before expiry.
	createdCertValidity = 2 * 365 * 24 * time.Hour
	// propagation bounds the wait for Entra to accept a new app's first
	// token request (replication takes seconds, sometimes minutes).
	propagation = 2 * time.Minute
)

// AddApplication implements PoolService.AddApplication.
func (s *PoolService) AddApplication(ctx context.Context, req *pb.AddApplicationRequest) (*pb.AddApplicationResponse, error) {
	info, err := s.pool.Add(ctx, pool.AddRequest{
		TenantID:     req.TenantId,
		ClientID:     req.ClientId,
		DisplayName:  req.DisplayName,
		Certificate:  req.Certificate,
		Password:     req.CertificatePassword,
		Organization: req.OrganizationApp,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.AddApplicationResponse{Application: applicationPB(info)}, nil
}

// CreateApplication implements PoolService.CreateApplication: for each app,
// a self-signed certificate is generated here (its key never leaves the
// agent), the app is registered in Entra with it and consented through the
// organization app, and added to the pool once Entra issues it a token.
func (s *PoolService) CreateApplication(ctx context.Context, req *pb.CreateApplicationRequest) (*pb.CreateApplicationResponse, error) {
	if s.registrar == nil {
		return nil, status.Error(codes.Unimplemented, "CreateApplication needs access to Microsoft Graph, which this agent was started without")
	}
	count := int(req.Count)
	switch {
	case count == 0:
		count = 1
	case count < 0 || count > maxCreateCount:
		return nil, toStatus(&pool.InvalidArgumentError{Field: "count", Reason: fmt.Sprintf("must be between 1 and %d", maxCreateCount)})
	}
	name := strings.TrimSpace(req.DisplayName)
	if name == "" {
		name = "backup-proxy"
	}
	apps := s.pool.Apps(req.TenantId)
	if len(apps) == 0 || !apps[0].Organization() {
		return nil, toStatus(&pool.PreconditionError{Reason: "tenant " + req.TenantId + " has no organization app; add it first with AddApplication"})
	}
	resp := &pb.CreateApplicationResponse{}
	for i := range count {
		appName := name
		if count > 1 {
			appName = fmt.Sprintf("%s %d", name, i+1)
		}
		info, err := s.createOne(ctx, req.TenantId, appName)
		if err != nil {
			return nil, toStatus(err)
		}
		resp.Applications = append(resp.Applications, applicationPB(info))
	}
	return resp, nil
}

func (s *PoolService) createOne(ctx context.Context, tenantID, name string) (pool.Info, error) {
	bundle, err := pool.GenerateCertificate(name, s.now(), createdCertValidity)
	if err != nil {
		return pool.Info{}, err
	}
	cert, err := pool.ParseCertificate(bundle, "", s.now())
	if err != nil {
		return pool.Info{}, err
	}
	clientID, err := s.registrar.RegisterApplication(ctx, tenantID, name, cert.Leaf())
	if err != nil {
		return pool.Info{}, fmt.Errorf("register %q in Entra: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, propagation)
	defer cancel()
	wait := time.Second
	for {
		info, err := s.pool.Add(ctx, pool.AddRequest{TenantID: tenantID, ClientID: clientID, DisplayName: name, Certificate: bundle})
		var pe *pool.PreconditionError
		if !errors.As(err, &pe) || !strings.Contains(pe.Reason, "AADSTS") {
			if err != nil {
				err = fmt.Errorf("application %s was registered in Entra but could not be added to the pool: %w", clientID, err)
			}
			return info, err
		}
		// Entra has not replicated the new app yet: try again shortly.
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return pool.Info{}, fmt.Errorf("application %s was registered in Entra but did not get a token within %v (%s); add it later with AddApplication", clientID, propagation, pe.Reason)
		}
		wait = min(2*wait, 16*time.Second)
	}
}

// ListApplications implements PoolService.ListApplications, with the
// scheduler's live statistics of every app of a tenant in use.
func (s *PoolService) ListApplications(_ context.Context, req *pb.ListApplicationsRequest) (*pb.ListApplicationsResponse, error) {
	resp := &pb.ListApplicationsResponse{}
	tenants := map[string]scheduler.TenantStats{}
	for _, info := range s.pool.List(req.TenantId) {
		app := applicationPB(info)
		if s.stats != nil {
			ts, ok := tenants[info.TenantID]
			if !ok {
				ts, _ = s.stats.TenantStats(info.TenantID)
				tenants[info.TenantID] = ts
			}
			if st, ok := ts.Apps[info.ClientID]; ok {
				app.Stats = &pb.ApplicationStats{
					Requests:               st.Requests,
					RuLastMinute:           float64(st.RULastMinute),
					RuLast_24H:             float64(st.RULast24h),
					Throttled:              st.Throttled,
					CurrentRateRuPerMinute: st.RatePerMinute,
				}
				if st.CooldownUntil.After(s.now()) {
					app.Stats.CooldownUntil = timestamppb.New(st.CooldownUntil)
					if app.State == pb.ApplicationState_APPLICATION_STATE_READY {
						app.State = pb.ApplicationState_APPLICATION_STATE_COOLING_DOWN
					}
				}
			}
		}
		resp.Applications = append(resp.Applications, app)
	}
	return resp, nil
}

// UpdateCertificate implements PoolService.UpdateCertificate.
func (s *PoolService) UpdateCertificate(ctx context.Context, req *pb.UpdateCertificateRequest) (*pb.UpdateCertificateResponse, error) {
	info, err := s.pool.UpdateCertificate(ctx, req.TenantId, req.ClientId, req.Certificate, req.CertificatePassword)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.UpdateCertificateResponse{Application: applicationPB(info)}, nil
}

// RemoveApplication implements PoolService.RemoveApplication.
func (s *PoolService) RemoveApplication(_ context.Context, req *pb.RemoveApplicationRequest) (*pb.RemoveApplicationResponse, error) {
	busy := s.jobs != nil && s.jobs.RunningJobs(req.TenantId) > 0
	if err := s.pool.Remove(req.TenantId, req.ClientId, busy); err != nil {
		return nil, toStatus(err)
	}
	return &pb.RemoveApplicationResponse{}, nil
}

func applicationPB(info pool.Info) *pb.Application {
	return &pb.Application{
		TenantId:               info.TenantID,
		ClientId:               info.ClientID,
		DisplayName:            info.DisplayName,
		OrganizationApp:        info.Organization,
		Thumbprint:             info.ThumbprintSHA1,
		ThumbprintSha256:       info.ThumbprintSHA256,
		CertificateNotAfter:    timestamppb.New(info.NotAfter),
		CertificateExpiresSoon: info.ExpiresSoon,
		State:                  appStatePB(info.State),
		StateReason:            info.Reason,
	}
}

func appStatePB(s pool.State) pb.ApplicationState {
	switch s {
	case pool.StateReady:
		return pb.ApplicationState_APPLICATION_STATE_READY
	case pool.StateFailed:
		return pb.ApplicationState_APPLICATION_STATE_FAILED
	case pool.StateCertificateInvalid:
		return pb.ApplicationState_APPLICATION_STATE_CERTIFICATE_INVALID
	}
	return pb.ApplicationState_APPLICATION_STATE_UNSPECIFIED
}
