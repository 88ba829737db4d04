package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/backup-proxy/backup-proxy/agent/auth"
	"github.com/backup-proxy/backup-proxy/agent/auth/authtest"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

const (
	readerToken   = "reader-token-0123456789abcdef0123456789"
	operatorToken = "operator-token-0123456789abcdef01234567"
)

// recordingJobs counts the calls that reached it, remembers the deadline of
// the last one, and panics for job id "panic".
type recordingJobs struct {
	pb.UnimplementedJobServiceServer
	calls atomic.Int32

	mu          sync.Mutex
	hasDeadline bool
	remaining   time.Duration
}

func (f *recordingJobs) record(ctx context.Context, id string) {
	f.calls.Add(1)
	f.mu.Lock()
	d, ok := ctx.Deadline()
	f.hasDeadline, f.remaining = ok, time.Until(d)
	f.mu.Unlock()
	if id == "panic" {
		panic("boom")
	}
}

func (f *recordingJobs) deadline() (bool, time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hasDeadline, f.remaining
}

func (f *recordingJobs) SubmitJob(ctx context.Context, req *pb.SubmitJobRequest) (*pb.SubmitJobResponse, error) {
	f.record(ctx, req.JobId)
	return &pb.SubmitJobResponse{Job: &pb.Job{JobId: req.JobId}}, nil
}

func (f *recordingJobs) GetJob(ctx context.Context, req *pb.GetJobRequest) (*pb.GetJobResponse, error) {
	f.record(ctx, req.JobId)
	return &pb.GetJobResponse{Job: &pb.Job{JobId: req.JobId}}, nil
}

func (f *recordingJobs) WatchJob(req *pb.WatchJobRequest, stream pb.JobService_WatchJobServer) error {
	f.record(stream.Context(), req.JobId)
	return stream.Send(&pb.WatchJobResponse{Job: &pb.Job{JobId: req.JobId}})
}

// pki is a CA with the server's certificate and the clients of the tests.
type pki struct {
	ca, foreign *authtest.CA
	server      authtest.Leaf
}

func newPKI(t *testing.T) *pki {
	ca := authtest.NewCA(t, "backup-proxy test CA")
	return &pki{ca: ca, foreign: authtest.NewCA(t, "someone else's CA"), server: ca.Server(t)}
}

// clientCreds are the TLS credentials of a client trusting the test CA and
// presenting cert (none: no client certificate).
func (p *pki) clientCreds(cert ...authtest.Leaf) grpc.DialOption {
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if len(cert) > 0 {
		// Sent whatever CAs the server names: crypto/tls would otherwise
		// quietly send none when the certificate's issuer is not among them.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert[0].TLS, nil }
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

type secureFixture struct {
	jobs *recordingJobs
	logs *observer.ObservedLogs
	dial func(opts ...grpc.DialOption) *grpc.ClientConn
}

func newSecureFixture(t *testing.T, limits Limits, sec Security) *secureFixture {
	core, logs := observer.New(zapcore.DebugLevel)
	f := &secureFixture{jobs: &recordingJobs{}, logs: logs}
	srv := NewServer(zap.New(core), limits, sec, Services{Job: f.jobs})
	f.dial = serveBufconn(t, srv)
	return f
}

func testTokens(t *testing.T) *auth.Tokens {
	t.Helper()
	path := authtest.WriteFile(t, t.TempDir(), "tokens", []byte(
		"# test tokens\nreader read "+readerToken+"\noperator read,write "+operatorToken+"\n"), 0o600)
	tokens, err := auth.LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	return tokens
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

type call struct {
	token string // sent as a bearer token when set
	rpc   func(context.Context, pb.JobServiceClient) error
}

func getJob(ctx context.Context, c pb.JobServiceClient) error {
	_, err := c.GetJob(ctx, &pb.GetJobRequest{JobId: "j1"})
	return err
}

func submitJob(ctx context.Context, c pb.JobServiceClient) error {
	_, err := c.SubmitJob(ctx, &pb.SubmitJobRequest{JobId: "j1"})
	return err
}

// TestMutualTLS is the acceptance test of transport security: callers without
// a certificate of the client CA never reach a handler, and the roles of a
// certificate decide what it may call.
func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	f := newSecureFixture(t, DefaultLimits(), Security{TLS: auth.ServerTLS(p.server.TLS, p.ca.Pool()), Tokens: testTokens(t)})
	reader := p.ca.Client(t, "backup-reader", auth.OrgRead)
	operator := p.ca.Client(t, "backup-operator", auth.OrgRead, auth.OrgWrite)
	noRoles := p.ca.Client(t, "stranger", "Contoso")
	foreign := p.foreign.Client(t, "intruder", auth.OrgRead, auth.OrgWrite)
	expired := p.ca.ClientValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "expired", auth.OrgRead, auth.OrgWrite)

	tests := []struct {
		name    string
		creds   grpc.DialOption
		call    call
		want    codes.Code
		detail  string // in the status message
		handled bool   // the call reached the handler
	}{
		// A failed handshake is UNAVAILABLE: the connection never carries an RPC.
		// Which reason the client reads races with its first write on the
		// closed connection; the server's log has it (checked below).
		{"no client certificate", p.clientCreds(), call{rpc: getJob}, codes.Unavailable, "", false},
		{"certificate of another CA", p.clientCreds(foreign), call{rpc: getJob}, codes.Unavailable, "", false},
		{"expired certificate", p.clientCreds(expired), call{rpc: getJob}, codes.Unavailable, "", false},
		{"plaintext client", grpc.WithTransportCredentials(insecure.NewCredentials()), call{rpc: getJob}, codes.Unavailable, "", false},
		{"read-only reads", p.clientCreds(reader), call{rpc: getJob}, codes.OK, "", true},
		{"read-only submits", p.clientCreds(reader), call{rpc: submitJob}, codes.PermissionDenied, "needs the write role", false},
		{"operator submits", p.clientCreds(operator), call{rpc: submitJob}, codes.OK, "", true},
		{"operator reads", p.clientCreds(operator), call{rpc: getJob}, codes.OK, "", true},
		{"certificate without roles", p.clientCreds(noRoles), call{rpc: getJob}, codes.PermissionDenied, "needs the read role", false},
		{"operator token beside a read-only certificate", p.clientCreds(reader), call{token: operatorToken, rpc: submitJob}, codes.OK, "", true},
		{"wrong token beside an operator certificate", p.clientCreds(operator), call{token: operatorToken + "x", rpc: getJob}, codes.Unauthenticated, "unknown bearer token", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := f.dial(tt.creds)
			before := f.jobs.calls.Load()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if tt.call.token != "" {
				ctx = withToken(ctx, tt.call.token)
			}
			err := tt.call.rpc(ctx, pb.NewJobServiceClient(conn))
			if status.Code(err) != tt.want || !strings.Contains(status.Convert(err).Message(), tt.detail) {
				t.Fatalf("got %v, want %v %s", err, tt.want, tt.detail)
			}
			if handled := f.jobs.calls.Load() > before; handled != tt.handled {
				t.Errorf("handler ran: %v, want %v", handled, tt.handled)
			}
		})
	}
	assertNoSecretsLogged(t, f.logs)
	// The server logs a refused handshake after the client saw the alert.
	waitFor(t, func() bool { return f.logs.FilterMessage("TLS handshake refused").Len() >= 4 })
	var refusals []string
	for _, e := range f.logs.FilterMessage("TLS handshake refused").All() {
		refusals = append(refusals, e.ContextMap()["error"].(string))
	}
	for _, want := range []string{"didn't provide a certificate", "unknown authority", "expired", "does not look like a TLS handshake"} {
		if !strings.Contains(strings.Join(refusals, "\n"), want) {
			t.Errorf("no refused handshake logged with %q; logged: %q", want, refusals)
		}
	}
}

func TestBearerTokens(t *testing.T) {
	p := newPKI(t)
	// TLS without a client CA: tokens are the only credentials.
	f := newSecureFixture(t, DefaultLimits(), Security{TLS: auth.ServerTLS(p.server.TLS, nil), Tokens: testTokens(t)})
	conn := f.dial(p.clientCreds())
	client := pb.NewJobServiceClient(conn)
	tests := []struct {
		name  string
		token string
		rpc   func(context.Context, pb.JobServiceClient) error
		want  codes.Code
	}{
		{"reader token reads", readerToken, getJob, codes.OK},
		{"reader token submits", readerToken, submitJob, codes.PermissionDenied},
		{"operator token submits", operatorToken, submitJob, codes.OK},
		{"wrong token", "not-a-token-of-this-agent-0123456789abcdef", getJob, codes.Unauthenticated},
		{"no token", "", getJob, codes.Unauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			if tt.token != "" {
				ctx = withToken(ctx, tt.token)
			}
			if err := tt.rpc(ctx, client); status.Code(err) != tt.want {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	// Load balancers check health without credentials.
	if _, err := healthpb.NewHealthClient(conn).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health without credentials: %v", err)
	}
	// Streams are admitted the same way.
	stream, err := client.WatchJob(withToken(t.Context(), "wrong-token-0123456789abcdef0123456789"), &pb.WatchJobRequest{JobId: "j1"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("WatchJob with a wrong token: %v", err)
	}
	assertNoSecretsLogged(t, f.logs)

	refused := f.logs.FilterMessage("rpc refused").All()
	if len(refused) != 4 {
		t.Fatalf("%d refusals logged, want 4: %v", len(refused), refused)
	}
	fields := refused[0].ContextMap()
	if refused[0].Level != zapcore.WarnLevel || fields["method"] != pb.JobService_SubmitJob_FullMethodName ||
		fields["caller"] != "reader" || fields["auth"] != auth.ViaToken || fields["code"] != "PermissionDenied" || fields["peer"] == nil {
		t.Errorf("refusal logged as %v %v", refused[0].Level, fields)
	}
}

func TestTokenOverPlaintextRefused(t *testing.T) {
	// A plaintext agent trusts its loopback callers, yet a token that
	// crossed in clear must be refused so its owner learns it is exposed.
	f := newSecureFixture(t, DefaultLimits(), Security{})
	client := pb.NewJobServiceClient(f.dial(grpc.WithTransportCredentials(insecure.NewCredentials())))
	err := getJob(withToken(t.Context(), operatorToken), client)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "without TLS") {
		t.Fatalf("token over plaintext: %v, want Unauthenticated", err)
	}
	if f.jobs.calls.Load() != 0 {
		t.Error("the handler ran")
	}
	if err := submitJob(t.Context(), client); err != nil {
		t.Fatalf("plaintext caller without a token: %v", err)
	}
	logged := f.logs.FilterMessage("rpc refused").FilterField(zap.String("code", "Unauthenticated")).All()
	if len(logged) != 1 || !strings.Contains(logged[0].ContextMap()["error"].(string), "without TLS") {
		t.Errorf("logs = %v, want the plaintext token refusal", f.logs.All())
	}
	assertNoSecretsLogged(t, f.logs)
}

func TestRateLimitPerCaller(t *testing.T) {
	limits := DefaultLimits()
	limits.RPCRate, limits.RPCBurst = 0.01, 2 // a call per 100s after a burst of 2
	p := newPKI(t)
	f := newSecureFixture(t, limits, Security{TLS: auth.ServerTLS(p.server.TLS, p.ca.Pool())})
	first := pb.NewJobServiceClient(f.dial(p.clientCreds(p.ca.Client(t, "first", auth.OrgRead))))
	second := pb.NewJobServiceClient(f.dial(p.clientCreds(p.ca.Client(t, "second", auth.OrgRead))))
	for range 2 {
		if err := getJob(t.Context(), first); err != nil {
			t.Fatal(err)
		}
	}
	err := getJob(t.Context(), first)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("3rd call = %v, want ResourceExhausted", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if d := retry.GetRetryDelay().AsDuration(); d <= 90*time.Second || d > 100*time.Second {
		t.Errorf("RetryInfo delay = %v, want about 100s", d)
	}
	if err := getJob(t.Context(), second); err != nil {
		t.Errorf("another caller is limited too: %v", err)
	}
}

func TestPanicBecomesInternal(t *testing.T) {
	f := newSecureFixture(t, DefaultLimits(), Security{})
	client := pb.NewJobServiceClient(f.dial(grpc.WithTransportCredentials(insecure.NewCredentials())))
	_, err := client.SubmitJob(t.Context(), &pb.SubmitJobRequest{JobId: "panic"})
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "boom") {
		t.Fatalf("panicking unary handler = %v, want Internal without the panic value", err)
	}
	stream, err := client.WatchJob(t.Context(), &pb.WatchJobRequest{JobId: "panic"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Internal {
		t.Fatalf("panicking stream handler = %v, want Internal", err)
	}
	panics := f.logs.FilterMessage("handler panicked").All()
	if len(panics) != 2 || panics[0].ContextMap()["panic"] != "boom" || !strings.Contains(panics[0].ContextMap()["stack"].(string), "recordingJobs") {
		t.Errorf("panic logs = %v", panics)
	}
	// The agent still serves.
	if err := getJob(t.Context(), client); err != nil {
		t.Errorf("after the panics: %v", err)
	}
}

func TestDefaultDeadline(t *testing.T) {
	f := newSecureFixture(t, DefaultLimits(), Security{})
	client := pb.NewJobServiceClient(f.dial(grpc.WithTransportCredentials(insecure.NewCredentials())))

	if err := getJob(t.Context(), client); err != nil {
		t.Fatal(err)
	}
	if ok, left := f.jobs.deadline(); !ok || left > DefaultLimits().DefaultRPCTimeout || left < DefaultLimits().DefaultRPCTimeout-time.Minute {
		t.Errorf("unary call without a deadline: deadline %v, %v left; want the default", ok, left)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
	defer cancel()
	if err := getJob(ctx, client); err != nil {
		t.Fatal(err)
	}
	if ok, left := f.jobs.deadline(); !ok || left < 59*time.Minute {
		t.Errorf("the caller's longer deadline was not kept: %v, %v left", ok, left)
	}

	stream, err := client.WatchJob(t.Context(), &pb.WatchJobRequest{JobId: "j1"})
	if err == nil {
		_, err = stream.Recv()
	}
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.jobs.deadline(); ok {
		t.Error("a stream got a default deadline; watches run as long as their job")
	}
}

// TestEveryServedMethodHasARole checks the wired server: every method it
// serves, including health and reflection, has a role.
func TestEveryServedMethodHasARole(t *testing.T) {
	srv := NewServer(zap.NewNop(), DefaultLimits(), Security{}, Services{})
	for service, info := range srv.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			method := "/" + service + "/" + m.Name
			if _, ok := auth.Required(method); !ok {
				t.Errorf("%s has no role: it would be refused to everyone", method)
			}
		}
	}
}

func assertNoSecretsLogged(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, secret := range []string{readerToken, operatorToken, "BEGIN CERTIFICATE", "PRIVATE KEY"} {
			if strings.Contains(line, secret) {
				t.Errorf("log %q contains a secret", line)
			}
		}
	}
}
