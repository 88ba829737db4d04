package agent

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

const testTenant = "11111111-1111-1111-1111-111111111111"

// gatedRunner backs up nothing: it reports progress and waits for its gate
// (or cancellation), so tests control when jobs end.
type gatedRunner struct{ gate chan struct{} }

func (r gatedRunner) Run(ctx context.Context, spec jobs.Spec, t *jobs.Tracker) (jobs.Result, error) {
	t.Add(jobs.Progress{ItemsDiscovered: 3, ItemsBackedUp: 3, BytesDownloaded: 300})
	select {
	case <-r.gate:
		return jobs.Result{RestorePointID: "rp-" + spec.ID}, nil
	case <-ctx.Done():
		return jobs.Result{}, ctx.Err()
	}
}

func jobClient(t *testing.T, maxRunning, maxQueued int) (pb.JobServiceClient, chan struct{}) {
	t.Helper()
	gate := make(chan struct{})
	m, err := jobs.Open(zap.NewNop(), jobs.Config{
		Path: filepath.Join(t.TempDir(), "jobs.db"), MaxRunning: maxRunning, MaxQueued: maxQueued, Runner: gatedRunner{gate},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		m.Close(ctx)
	})
	srv := NewServer(zap.NewNop(), DefaultLimits(), Security{}, Services{Job: NewJobService(m)})
	return pb.NewJobServiceClient(startServer(t, srv)), gate
}

func onedriveJob(id string) *pb.SubmitJobRequest {
	return &pb.SubmitJobRequest{JobId: id, TenantId: testTenant,
		Source: &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: "alice@contoso.com"}}}
}

func TestSubmitJobErrors(t *testing.T) {
	client, _ := jobClient(t, 1, 1)
	ctx := t.Context()
	if _, err := client.SubmitJob(ctx, onedriveJob("j1")); err != nil {
		t.Fatal(err)
	}
	again, err := client.SubmitJob(ctx, onedriveJob("j1"))
	if err != nil || again.Job.JobId != "j1" {
		t.Fatalf("idempotent resubmit: %v", err)
	}
	other := onedriveJob("j1")
	other.Mode = pb.BackupMode_BACKUP_MODE_FULL
	if _, err := client.SubmitJob(ctx, other); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same id other spec: %v", err)
	}

	_, err = client.SubmitJob(ctx, &pb.SubmitJobRequest{JobId: "j2", TenantId: testTenant})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no source: %v", err)
	}
	var br *errdetails.BadRequest
	for _, d := range status.Convert(err).Details() {
		if b, ok := d.(*errdetails.BadRequest); ok {
			br = b
		}
	}
	if br == nil || br.FieldViolations[0].Field != "source" {
		t.Errorf("no BadRequest naming the field: %v", status.Convert(err).Details())
	}

	if _, err := client.SubmitJob(ctx, onedriveJob("j2")); err != nil { // queued behind j1
		t.Fatal(err)
	}
	_, err = client.SubmitJob(ctx, onedriveJob("j3"))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("beyond the queue: %v", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.RetryDelay.AsDuration() <= 0 {
		t.Errorf("RESOURCE_EXHAUSTED without RetryInfo: %v", status.Convert(err).Details())
	}
	if _, err := client.GetJob(ctx, &pb.GetJobRequest{JobId: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown job: %v", err)
	}
}

func TestWatchJobUntilEnd(t *testing.T) {
	client, gate := jobClient(t, 1, 10)
	ctx := t.Context()
	if _, err := client.SubmitJob(ctx, onedriveJob("w")); err != nil {
		t.Fatal(err)
	}
	stream, err := client.WatchJob(ctx, &pb.WatchJobRequest{JobId: "w"})
	if err != nil {
		t.Fatal(err)
	}
	var last *pb.Job
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Job
		if last.State == pb.JobState_JOB_STATE_RUNNING && last.Progress.ItemsBackedUp == 3 && gate != nil {
			close(gate)
			gate = nil
		}
	}
	if last.State != pb.JobState_JOB_STATE_SUCCEEDED || last.RestorePointId != "rp-w" || last.GetOnedrive().GetUser() != "alice@contoso.com" {
		t.Errorf("last snapshot = %v", last)
	}
	list, err := client.ListJobs(ctx, &pb.ListJobsRequest{TenantId: testTenant, State: pb.JobState_JOB_STATE_SUCCEEDED})
	if err != nil || len(list.Jobs) != 1 {
		t.Errorf("list succeeded = %v, %v", list, err)
	}
	if _, err := client.ListJobs(ctx, &pb.ListJobsRequest{PageToken: "%%%"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}
}

func TestCancelRunningJob(t *testing.T) {
	client, _ := jobClient(t, 1, 10)
	ctx := t.Context()
	if _, err := client.SubmitJob(ctx, onedriveJob("c")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		j, err := client.GetJob(ctx, &pb.GetJobRequest{JobId: "c"})
		return err == nil && j.Job.State == pb.JobState_JOB_STATE_RUNNING
	})
	resp, err := client.CancelJob(ctx, &pb.CancelJobRequest{JobId: "c"})
	if err != nil || resp.Job.State != pb.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("cancel = %v, %v", resp, err)
	}
}
