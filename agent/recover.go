package agent

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// errPanic answers a call whose handler panicked; the panic's details are in
// the log only, as they may describe internals.
var errPanic = errors.New("internal error; the agent's log has the details")

// unaryRecover turns a panic below it into INTERNAL instead of a crashed
// agent, logging the panic value and stack.
func unaryRecover(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				resp, err = nil, panicked(log, info.FullMethod, r)
			}
		}()
		return handler(ctx, req)
	}
}

// streamRecover is unaryRecover for streaming RPCs.
func streamRecover(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = panicked(log, info.FullMethod, r)
			}
		}()
		return handler(srv, ss)
	}
}

func panicked(log *zap.Logger, method string, r any) error {
	log.Error("handler panicked",
		zap.String("method", method),
		zap.String("panic", fmt.Sprint(r)),
		zap.String("stack", string(debug.Stack())),
	)
	return toStatus(errPanic)
}
