package agent

import (
	"context"
	"time"

	"google.golang.org/grpc"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// longUnary are unary RPCs that legitimately outlast the default deadline;
// like streams, they run until they end or the caller's own deadline.
var longUnary = map[string]bool{
	// With read_data, it reads every stored byte.
	pb.CatalogService_VerifyRepository_FullMethodName: true,
	// Waits up to two minutes per application for Entra to propagate it.
	pb.PoolService_CreateApplication_FullMethodName: true,
}

// unaryDeadline gives unary RPCs without a deadline one of d, so a client
// that never hangs up cannot hold a handler forever. A client's own
// deadline, shorter or longer, is kept.
func unaryDeadline(d time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, ok := ctx.Deadline(); ok || d <= 0 || longUnary[info.FullMethod] {
			return handler(ctx, req)
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return handler(ctx, req)
	}
}
