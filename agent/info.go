package agent

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backup-proxy/backup-proxy/internal/version"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/repo"
)

// JobCounter reports the job manager's load.
type JobCounter interface {
	// JobCounts returns the jobs running and waiting now.
	JobCounts() (running, queued int)
}

// TenantLister lists the tenants with applications in the pool.
type TenantLister interface {
	Tenants() []string
}

// RepositoryStats reports the repository's usage.
type RepositoryStats interface {
	Dir() string
	Stats(ctx context.Context) (repo.Stats, error)
}

// InfoConfig configures the AgentService.
type InfoConfig struct {
	// Start is when the process started.
	Start time.Time
	// Now is the clock; uptime is Now() - Start.
	Now func() time.Time
	// MaxConcurrentJobs and MaxQueuedJobs are the job manager's limits.
	MaxConcurrentJobs int
	MaxQueuedJobs     int
	// Jobs is the job manager; nil while none runs (no job can run then).
	Jobs JobCounter
	// Tenants is the application pool.
	Tenants TenantLister
	// Repository is the backup repository; nil leaves usage empty.
	Repository RepositoryStats
}

// InfoService implements AgentService.
type InfoService struct {
	pb.UnimplementedAgentServiceServer
	cfg InfoConfig
}

// NewInfoService returns the AgentService implementation.
func NewInfoService(cfg InfoConfig) *InfoService {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &InfoService{cfg: cfg}
}

// GetAgentInfo implements AgentService.GetAgentInfo.
func (s *InfoService) GetAgentInfo(ctx context.Context, _ *pb.GetAgentInfoRequest) (*pb.GetAgentInfoResponse, error) {
	resp := &pb.GetAgentInfoResponse{
		Version:   version.Version,
		StartTime: timestamppb.New(s.cfg.Start),
		Uptime:    durationpb.New(s.cfg.Now().Sub(s.cfg.Start)),
		Capacity: &pb.Capacity{
			MaxConcurrentJobs: int32(s.cfg.MaxConcurrentJobs),
			MaxQueuedJobs:     int32(s.cfg.MaxQueuedJobs),
		},
	}
	if s.cfg.Jobs != nil {
		running, queued := s.cfg.Jobs.JobCounts()
		resp.Capacity.RunningJobs = int32(running)
		resp.Capacity.QueuedJobs = int32(queued)
	}
	if s.cfg.Tenants != nil {
		resp.Tenants = s.cfg.Tenants.Tenants()
	}
	if s.cfg.Repository != nil {
		st, err := s.cfg.Repository.Stats(ctx)
		if err != nil {
			return nil, toStatus(err)
		}
		resp.Repository = &pb.RepositoryUsage{
			Path: s.cfg.Repository.Dir(), BytesOnDisk: st.BytesOnDisk, Chunks: st.Chunks,
			Packs: int64(st.Packs), RestorePoints: int64(st.RestorePoints),
		}
	}
	return resp, nil
}
