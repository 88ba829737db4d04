package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/backup-proxy/backup-proxy/agent/auth"
)

// Security is how callers reach the agent and prove who they are. The zero
// value is plaintext with every caller holding every role: for loopback
// listeners, where only local users can call.
type Security struct {
	// TLS is the server's TLS configuration (auth.ServerTLS). With it,
	// callers must authenticate with a verified client certificate or a
	// bearer token and hold the role an RPC needs.
	TLS *tls.Config
	// Tokens are the bearer tokens accepted over TLS; nil: none.
	Tokens *auth.Tokens
}

// maxRateLimited bounds the callers rate-limited one by one; beyond it, new
// callers share one budget (auth.Limiter).
const maxRateLimited = 10000

// admission decides whether a call may proceed: authenticate, authorize,
// then the caller's rate limit.
type admission struct {
	policy  *auth.Policy
	limiter *auth.Limiter // nil: no rate limit
	now     func() time.Time
}

func newAdmission(sec Security, limits Limits) *admission {
	a := &admission{policy: auth.Open(), now: time.Now}
	if sec.TLS != nil {
		a.policy = auth.Secure(sec.Tokens)
	}
	if limits.RPCRate > 0 {
		a.limiter = auth.NewLimiter(limits.RPCRate, max(limits.RPCBurst, 1), maxRateLimited)
	}
	return a
}

func (a *admission) admit(ctx context.Context, method string) error {
	var (
		creds    auth.Credentials
		peerHost string
	)
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			creds.TLS = &ti.State
		}
		if p.Addr != nil {
			peerHost = p.Addr.String()
			if host, _, err := net.SplitHostPort(peerHost); err == nil {
				peerHost = host
			}
		}
	}
	creds.Authorization = metadata.ValueFromIncomingContext(ctx, "authorization")
	id, err := a.policy.Authenticate(creds)
	setCaller(ctx, id)
	if err != nil {
		return toStatus(err)
	}
	if err := a.policy.Authorize(id, method); err != nil {
		return toStatus(err)
	}
	if a.limiter != nil {
		if err := a.limiter.Allow(id.RateKey(peerHost), a.now()); err != nil {
			return toStatus(err)
		}
	}
	return nil
}

func (a *admission) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.admit(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *admission) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.admit(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// handshakeLogger logs refused TLS handshakes, which never become RPCs: a
// client with a missing, foreign or expired certificate is otherwise
// invisible in the agent's log.
type handshakeLogger struct {
	credentials.TransportCredentials
	log *zap.Logger
}

func (h handshakeLogger) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := h.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		level := zap.InfoLevel
		if errors.Is(err, io.EOF) {
			level = zap.DebugLevel // a TCP probe that hung up
		}
		h.log.Log(level, "TLS handshake refused", zap.String("peer", conn.RemoteAddr().String()), zap.Error(err))
	}
	return c, info, err
}

func (h handshakeLogger) Clone() credentials.TransportCredentials {
	return handshakeLogger{h.TransportCredentials.Clone(), h.log}
}
