// Package agent is the agent's gRPC surface: one function wires the server
// (limits, health, reflection, services) and thin adapters translate between
// the backupproxy.v1 API and the domain packages.
package agent

import (
	"context"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// Limits are the server's explicit resource limits. The zero value is not
// usable; start from DefaultLimits.
type Limits struct {
	// MaxRecvMsgBytes bounds one request message. Certificates are the largest
	// legitimate requests (a few KiB); the bound sits well above the pool's own
	// 1 MiB certificate limit so that an oversized certificate gets the pool's
	// INVALID_ARGUMENT saying so rather than a bare transport error.
	MaxRecvMsgBytes int
	// MaxSendMsgBytes bounds one response message. ReadItem sends at most
	// 1 MiB of data per message; list pages stay well below this.
	MaxSendMsgBytes int
	// MaxConcurrentStreams bounds concurrent RPCs per client connection.
	MaxConcurrentStreams uint32
	// ConnectionTimeout bounds the connection handshake.
	ConnectionTimeout time.Duration
	// KeepaliveMinTime is the shortest client ping interval tolerated; faster
	// pingers are disconnected.
	KeepaliveMinTime time.Duration
	// MaxConnectionIdle closes connections without RPCs for this long.
	MaxConnectionIdle time.Duration
	// DefaultRPCTimeout is the deadline of unary RPCs whose caller set
	// none; streams and the few long unary RPCs (longUnary) are exempt.
	DefaultRPCTimeout time.Duration
	// RPCRate is the calls per second each caller may make on average, and
	// RPCBurst how many at once; 0 disables the limit. A caller is its
	// certificate's or token's name, or its address when anonymous.
	RPCRate  float64
	RPCBurst int
}

// DefaultLimits returns the limits the agent runs with.
func DefaultLimits() Limits {
	return Limits{
		MaxRecvMsgBytes:      16 << 20,
		MaxSendMsgBytes:      4 << 20,
		MaxConcurrentStreams: 128,
		ConnectionTimeout:    10 * time.Second,
		KeepaliveMinTime:     10 * time.Second,
		MaxConnectionIdle:    30 * time.Minute,
		DefaultRPCTimeout:    2 * time.Minute,
		RPCRate:              200,
		RPCBurst:             400,
	}
}

// Services are the implementations of the backupproxy.v1 services. A nil
// service is registered as unimplemented: its RPCs answer UNIMPLEMENTED.
type Services struct {
	Agent   pb.AgentServiceServer
	Pool    pb.PoolServiceServer
	Job     pb.JobServiceServer
	Catalog pb.CatalogServiceServer
}

// Server is the agent's gRPC server with its health service.
type Server struct {
	log    *zap.Logger
	grpc   *grpc.Server
	health *health.Server
}

// NewServer wires a gRPC server: limits, transport security, per-RPC
// logging, panic recovery, admission (authentication, roles, rate limit),
// default deadlines, the services, the standard health service and server
// reflection. extra options are appended (tests use them to add interceptors
// that run after these).
func NewServer(log *zap.Logger, limits Limits, sec Security, svcs Services, extra ...grpc.ServerOption) *Server {
	log = log.Named("grpc")
	admit := newAdmission(sec, limits)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(limits.MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(limits.MaxSendMsgBytes),
		grpc.MaxConcurrentStreams(limits.MaxConcurrentStreams),
		grpc.ConnectionTimeout(limits.ConnectionTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             limits.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: limits.MaxConnectionIdle,
		}),
		// The logger is outermost to see the final code and the caller;
		// recovery is next so that panics anywhere below are caught.
		grpc.ChainUnaryInterceptor(unaryLogger(log), unaryRecover(log), admit.unary, unaryDeadline(limits.DefaultRPCTimeout)),
		grpc.ChainStreamInterceptor(streamLogger(log), streamRecover(log), admit.stream),
	}
	if sec.TLS != nil {
		opts = append(opts, grpc.Creds(handshakeLogger{credentials.NewTLS(sec.TLS), log}))
	}
	gs := grpc.NewServer(append(opts, extra...)...)

	if svcs.Agent == nil {
		svcs.Agent = pb.UnimplementedAgentServiceServer{}
	}
	if svcs.Pool == nil {
		svcs.Pool = pb.UnimplementedPoolServiceServer{}
	}
	if svcs.Job == nil {
		svcs.Job = pb.UnimplementedJobServiceServer{}
	}
	if svcs.Catalog == nil {
		svcs.Catalog = pb.UnimplementedCatalogServiceServer{}
	}
	pb.RegisterAgentServiceServer(gs, svcs.Agent)
	pb.RegisterPoolServiceServer(gs, svcs.Pool)
	pb.RegisterJobServiceServer(gs, svcs.Job)
	pb.RegisterCatalogServiceServer(gs, svcs.Catalog)

	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)
	for name := range gs.GetServiceInfo() {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)

	return &Server{log: log, grpc: gs, health: hs}
}

// SharedBudgetService is the health service name that reports the budget
// shared with other agents (serve --budget-redis): NOT_SERVING while this
// agent works on its fallback share. The agent as a whole ("") stays
// SERVING: it still backs up, only more slowly.
const SharedBudgetService = "backupproxy.v1.SharedBudget"

// SetSharedBudgetHealth reports the shared budget's state in health.
func (s *Server) SetSharedBudgetHealth(up bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if !up {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	s.health.SetServingStatus(SharedBudgetService, st)
}

// Serve accepts connections on lis until Shutdown. It returns nil after a
// shutdown and the listener's error otherwise.
func (s *Server) Serve(lis net.Listener) error {
	s.log.Info("serving", zap.String("address", lis.Addr().String()))
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// ErrShutdownForced reports that in-flight RPCs did not finish within the
// shutdown deadline and were cut off.
var ErrShutdownForced = errors.New("graceful shutdown deadline exceeded; in-flight RPCs were cancelled")

// Shutdown stops the server: health turns NOT_SERVING so load balancers and
// central servers stop sending work, new RPCs are refused, and in-flight RPCs
// may finish until ctx is done; then the rest are cancelled and
// ErrShutdownForced is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
		return ErrShutdownForced
	}
}
