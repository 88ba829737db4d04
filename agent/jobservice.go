package agent

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// watchInterval bounds how often WatchJob sends a snapshot of a busy job.
const watchInterval = 250 * time.Millisecond

// JobService implements JobService over a jobs.Manager.
type JobService struct {
	pb.UnimplementedJobServiceServer
	jobs *jobs.Manager
}

// NewJobService returns the JobService implementation.
func NewJobService(m *jobs.Manager) *JobService { return &JobService{jobs: m} }

// SubmitJob implements JobService.SubmitJob.
func (s *JobService) SubmitJob(_ context.Context, req *pb.SubmitJobRequest) (*pb.SubmitJobResponse, error) {
	spec := jobs.Spec{ID: req.JobId, TenantID: req.TenantId, Mode: modeFromPB(req.Mode)}
	switch src := req.Source.(type) {
	case *pb.SubmitJobRequest_Onedrive:
		spec.Source = jobs.Source{Kind: jobs.OneDrive, Ref: src.Onedrive.GetUser()}
	case *pb.SubmitJobRequest_SharepointSite:
		spec.Source = jobs.Source{Kind: jobs.SharePointSite, Ref: src.SharepointSite.GetSite()}
	}
	if req.Mode != pb.BackupMode_BACKUP_MODE_UNSPECIFIED && spec.Mode == "" {
		return nil, toStatus(&jobs.InvalidSpecError{Field: "mode", Reason: "unknown backup mode " + req.Mode.String()})
	}
	j, err := s.jobs.Submit(spec)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.SubmitJobResponse{Job: jobPB(j)}, nil
}

// GetJob implements JobService.GetJob.
func (s *JobService) GetJob(_ context.Context, req *pb.GetJobRequest) (*pb.GetJobResponse, error) {
	j, err := s.jobs.Get(req.JobId)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetJobResponse{Job: jobPB(j)}, nil
}

// ListJobs implements JobService.ListJobs.
func (s *JobService) ListJobs(_ context.Context, req *pb.ListJobsRequest) (*pb.ListJobsResponse, error) {
	if req.PageSize < 0 {
		return nil, toStatus(&jobs.InvalidSpecError{Field: "page_size", Reason: "must not be negative"})
	}
	list, next, err := s.jobs.List(jobs.Filter{TenantID: req.TenantId, State: stateFromPB(req.State)}, int(req.PageSize), req.PageToken)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListJobsResponse{NextPageToken: next}
	for _, j := range list {
		resp.Jobs = append(resp.Jobs, jobPB(j))
	}
	return resp, nil
}

// WatchJob implements JobService.WatchJob.
func (s *JobService) WatchJob(req *pb.WatchJobRequest, stream pb.JobService_WatchJobServer) error {
	err := s.jobs.Watch(stream.Context(), req.JobId, watchInterval, func(j jobs.Job) error {
		return stream.Send(&pb.WatchJobResponse{Job: jobPB(j)})
	})
	return toStatus(err)
}

// CancelJob implements JobService.CancelJob.
func (s *JobService) CancelJob(ctx context.Context, req *pb.CancelJobRequest) (*pb.CancelJobResponse, error) {
	// Wait a little for a running job to stop so the answer shows it ended.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	j, err := s.jobs.Cancel(wctx, req.JobId)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.CancelJobResponse{Job: jobPB(j)}, nil
}

func modeFromPB(m pb.BackupMode) jobs.Mode {
	switch m {
	case pb.BackupMode_BACKUP_MODE_UNSPECIFIED, pb.BackupMode_BACKUP_MODE_INCREMENTAL:
		return jobs.Incremental
	case pb.BackupMode_BACKUP_MODE_FULL:
		return jobs.Full
	}
	return ""
}

var statesPB = map[jobs.State]pb.JobState{
	jobs.Queued:             pb.JobState_JOB_STATE_QUEUED,
	jobs.Running:            pb.JobState_JOB_STATE_RUNNING,
	jobs.Succeeded:          pb.JobState_JOB_STATE_SUCCEEDED,
	jobs.PartiallySucceeded: pb.JobState_JOB_STATE_PARTIALLY_SUCCEEDED,
	jobs.Failed:             pb.JobState_JOB_STATE_FAILED,
	jobs.Cancelled:          pb.JobState_JOB_STATE_CANCELLED,
}

func stateFromPB(s pb.JobState) jobs.State {
	for k, v := range statesPB {
		if v == s {
			return k
		}
	}
	return ""
}

func timePB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func jobPB(j jobs.Job) *pb.Job {
	out := &pb.Job{
		JobId:          j.ID,
		TenantId:       j.TenantID,
		State:          statesPB[j.State],
		Error:          j.Error,
		RestorePointId: j.RestorePointID,
		CreateTime:     timePB(j.Created),
		StartTime:      timePB(j.Started),
		EndTime:        timePB(j.Ended),
		Progress: &pb.JobProgress{
			ItemsDiscovered:   j.Progress.ItemsDiscovered,
			ItemsBackedUp:     j.Progress.ItemsBackedUp,
			ItemsFailed:       j.Progress.ItemsFailed,
			ItemsDeleted:      j.Progress.ItemsDeleted,
			BytesDownloaded:   j.Progress.BytesDownloaded,
			BytesStored:       j.Progress.BytesStored,
			ThrottledRequests: j.Progress.ThrottledRequests,
		},
	}
	switch j.Mode {
	case jobs.Full:
		out.Mode = pb.BackupMode_BACKUP_MODE_FULL
	default:
		out.Mode = pb.BackupMode_BACKUP_MODE_INCREMENTAL
	}
	switch j.Source.Kind {
	case jobs.OneDrive:
		out.Source = &pb.Job_Onedrive{Onedrive: &pb.OneDriveSource{User: j.Source.Ref}}
	case jobs.SharePointSite:
		out.Source = &pb.Job_SharepointSite{SharepointSite: &pb.SharePointSiteSource{Site: j.Source.Ref}}
	}
	for _, f := range j.FailedItems {
		out.FailedItems = append(out.FailedItems, &pb.FailedItem{ItemId: f.ItemID, Path: f.Path, Reason: f.Reason})
	}
	return out
}
