package agent

import (
	"context"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/backup-proxy/backup-proxy/agent/auth"
)

// callerSlot carries the caller's identity from the admission interceptor
// back out to the logger, which runs outside it and so never sees the
// context admission works in.
type callerSlot struct {
	id  auth.Identity
	set bool
}

type callerKey struct{}

func withCallerSlot(ctx context.Context) (context.Context, *callerSlot) {
	slot := &callerSlot{}
	return context.WithValue(ctx, callerKey{}, slot), slot
}

// setCaller records the caller of the RPC of ctx for its log line.
func setCaller(ctx context.Context, id auth.Identity) {
	if slot, ok := ctx.Value(callerKey{}).(*callerSlot); ok {
		slot.id, slot.set = id, true
	}
}

// ctxStream is a server stream with a replaced context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// unaryLogger logs every unary RPC once it ends: method, code, duration,
// peer and caller. Requests, responses and credentials are never logged:
// they can carry certificates and tokens.
func unaryLogger(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		ctx, slot := withCallerSlot(ctx)
		resp, err := handler(ctx, req)
		logRPC(ctx, log, info.FullMethod, start, slot, err)
		return resp, err
	}
}

// streamLogger is unaryLogger for streaming RPCs.
func streamLogger(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		ctx, slot := withCallerSlot(ss.Context())
		err := handler(srv, ctxStream{ss, ctx})
		logRPC(ctx, log, info.FullMethod, start, slot, err)
		return err
	}
}

func logRPC(ctx context.Context, log *zap.Logger, method string, start time.Time, caller *callerSlot, err error) {
	st := status.Convert(err)
	fields := []zap.Field{
		zap.String("method", method),
		zap.String("code", st.Code().String()),
		zap.Duration("duration", time.Since(start)),
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		fields = append(fields, zap.String("peer", p.Addr.String()))
	}
	if caller.set {
		fields = append(fields, zap.String("auth", caller.id.Via))
		if caller.id.Name != "" {
			fields = append(fields, zap.String("caller", caller.id.Name))
		}
	}
	switch st.Code() {
	case codes.OK:
		log.Debug("rpc", fields...)
	case codes.Internal, codes.Unknown, codes.DataLoss:
		log.Error("rpc", append(fields, zap.String("error", st.Message()))...)
	case codes.Unauthenticated, codes.PermissionDenied:
		log.Warn("rpc refused", append(fields, zap.String("error", st.Message()))...)
	default:
		log.Info("rpc", append(fields, zap.String("error", st.Message()))...)
	}
}
