package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backup-proxy/backup-proxy/pool"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// TenantJobs reports whether a tenant has running jobs.
type TenantJobs interface {
	RunningJobs(tenantID string) int
}

// PoolService implements PoolService over a pool.Pool.
type PoolService struct {
	pb.UnimplementedPoolServiceServer
	pool *pool.Pool
	jobs TenantJobs // nil while no job manager runs
}

// NewPoolService returns the PoolService implementation.
func NewPoolService(p *pool.Pool, jobs TenantJobs) *PoolService {
	return &PoolService{pool: p, jobs: jobs}
}

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

// CreateApplication implements PoolService.CreateApplication.
func (s *PoolService) CreateApplication(context.Context, *pb.CreateApplicationRequest) (*pb.CreateApplicationResponse, error) {
	return nil, status.Error(codes.Unimplemented, "CreateApplication is not built yet: it needs the Graph client to register applications in Entra; add existing applications with AddApplication")
}

// ListApplications implements PoolService.ListApplications.
func (s *PoolService) ListApplications(_ context.Context, req *pb.ListApplicationsRequest) (*pb.ListApplicationsResponse, error) {
	resp := &pb.ListApplicationsResponse{}
	for _, info := range s.pool.List(req.TenantId) {
		resp.Applications = append(resp.Applications, applicationPB(info))
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
