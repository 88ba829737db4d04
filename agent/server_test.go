package agent

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/backup-proxy/backup-proxy/internal/version"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

type fakeJobs struct{ running, queued int }

func (f fakeJobs) JobCounts() (int, int) { return f.running, f.queued }

// startServer runs srv on a bufconn listener and returns a client connection.
// The server is shut down when the test ends.
func startServer(t *testing.T, srv *Server) *grpc.ClientConn {
	t.Helper()
	dial := serveBufconn(t, srv)
	return dial(grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// serveBufconn runs srv on a bufconn listener and returns a function that
// opens client connections to it (closed when the test ends) with the given
// options, e.g. transport credentials. The server is shut down when the
// test ends.
func serveBufconn(t *testing.T, srv *Server) func(opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	var conns []*grpc.ClientConn
	dial := func(opts ...grpc.DialOption) *grpc.ClientConn {
		t.Helper()
		conn, err := grpc.NewClient("passthrough:///bufnet", append([]grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64 << 20)),
		}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		return conn
	}
	t.Cleanup(func() {
		for _, conn := range conns {
			conn.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return dial
}

func testServer(t *testing.T, extra ...grpc.ServerOption) (*Server, *grpc.ClientConn) {
	start := time.Date(2026, 11, 26, 6, 0, 0, 0, time.UTC)
	srv := NewServer(zap.NewNop(), DefaultLimits(), Security{}, Services{
		Agent: NewInfoService(InfoConfig{
			Start:             start,
			Now:               func() time.Time { return start.Add(90 * time.Minute) },
			MaxConcurrentJobs: 4,
			MaxQueuedJobs:     100,
			Jobs:              fakeJobs{running: 2, queued: 3},
		}),
	}, extra...)
	return srv, startServer(t, srv)
}

func TestHealth(t *testing.T) {
	_, conn := testServer(t)
	client := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "backupproxy.v1.AgentService", "backupproxy.v1.JobService"} {
		resp, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("Check(%q): %v", service, err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, want SERVING", service, resp.Status)
		}
	}
	_, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "no.such.Service"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Check(unknown service) = %v, want NotFound", err)
	}
}

func TestReflectionListsServices(t *testing.T) {
	_, conn := testServer(t)
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		got = append(got, s.Name)
	}
	for _, want := range []string{
		"backupproxy.v1.AgentService",
		"backupproxy.v1.PoolService",
		"backupproxy.v1.JobService",
		"backupproxy.v1.CatalogService",
		"grpc.health.v1.Health",
		"grpc.reflection.v1.ServerReflection",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("reflection lists %v, missing %s", got, want)
		}
	}
}

func TestGetAgentInfo(t *testing.T) {
	_, conn := testServer(t)
	resp, err := pb.NewAgentServiceClient(conn).GetAgentInfo(t.Context(), &pb.GetAgentInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Version != version.Version {
		t.Errorf("version = %q, want %q", resp.Version, version.Version)
	}
	if got := resp.Uptime.AsDuration(); got != 90*time.Minute {
		t.Errorf("uptime = %v, want 1h30m", got)
	}
	if got := resp.StartTime.AsTime(); !got.Equal(time.Date(2026, 11, 26, 6, 0, 0, 0, time.UTC)) {
		t.Errorf("start time = %v", got)
	}
	c := resp.Capacity
	if c.MaxConcurrentJobs != 4 || c.MaxQueuedJobs != 100 || c.RunningJobs != 2 || c.QueuedJobs != 3 {
		t.Errorf("capacity = %v, want max 4/100, running 2, queued 3", c)
	}
}

func TestUnimplementedServicesSaySo(t *testing.T) {
	_, conn := testServer(t)
	_, err := pb.NewJobServiceClient(conn).SubmitJob(t.Context(), &pb.SubmitJobRequest{JobId: "j1"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("SubmitJob = %v, want Unimplemented", err)
	}
	if msg := status.Convert(err).Message(); msg == "" {
		t.Error("Unimplemented without a message")
	}
}

func TestOversizedMessageRejected(t *testing.T) {
	_, conn := testServer(t)
	big := make([]byte, DefaultLimits().MaxRecvMsgBytes+1)
	_, err := pb.NewPoolServiceClient(conn).AddApplication(t.Context(), &pb.AddApplicationRequest{Certificate: big})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversized AddApplication = %v, want ResourceExhausted", err)
	}
}

// TestGracefulShutdownFinishesInFlightRPC holds a GetAgentInfo call inside the
// server, starts a shutdown, and checks that health turned NOT_SERVING, the
// call still completes, and only then does the shutdown finish.
func TestGracefulShutdownFinishesInFlightRPC(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	hold := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if info.FullMethod == pb.AgentService_GetAgentInfo_FullMethodName {
			close(entered)
			<-release
		}
		return handler(ctx, req)
	}
	srv, conn := testServer(t, grpc.ChainUnaryInterceptor(hold))

	rpcDone := make(chan error, 1)
	go func() {
		_, err := pb.NewAgentServiceClient(conn).GetAgentInfo(context.Background(), &pb.GetAgentInfoRequest{})
		rpcDone <- err
	}()
	<-entered

	shutdownDone := make(chan error, 1)
	go func() { shutdownDone <- srv.Shutdown(context.Background()) }()

	// Health goes NOT_SERVING before the in-flight call ends; health.Server
	// is checked directly since new RPCs may already be refused.
	waitFor(t, func() bool {
		resp, err := srv.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})
	select {
	case err := <-shutdownDone:
		t.Fatalf("shutdown finished while an RPC was in flight: %v", err)
	default:
	}

	close(release)
	if err := <-rpcDone; err != nil {
		t.Fatalf("in-flight RPC failed: %v", err)
	}
	if err := <-shutdownDone; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestShutdownDeadlineCutsOffRPC(t *testing.T) {
	entered := make(chan struct{})
	hold := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		close(entered)
		<-ctx.Done() // a handler that only stops when cancelled
		return nil, ctx.Err()
	}
	srv, conn := testServer(t, grpc.ChainUnaryInterceptor(hold))
	rpcDone := make(chan error, 1)
	go func() {
		_, err := pb.NewAgentServiceClient(conn).GetAgentInfo(context.Background(), &pb.GetAgentInfoRequest{})
		rpcDone <- err
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // deadline already passed
	if err := srv.Shutdown(ctx); !errors.Is(err, ErrShutdownForced) {
		t.Fatalf("shutdown = %v, want ErrShutdownForced", err)
	}
	if err := <-rpcDone; status.Code(err) == codes.OK {
		t.Fatal("cut-off RPC succeeded")
	}
}

// waitFor polls cond; it is for state changed by another goroutine that
// offers no channel to wait on.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
