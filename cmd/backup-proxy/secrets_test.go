package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/backup-proxy/backup-proxy/agent"
	"github.com/backup-proxy/backup-proxy/agent/auth"
	"github.com/backup-proxy/backup-proxy/agent/auth/authtest"
	"github.com/backup-proxy/backup-proxy/graphsim"
	"github.com/backup-proxy/backup-proxy/metrics"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/scheduler"
)

// TestNoSecretsLeak is issue 8's secrets test: a full session against a
// faulty tenant, with the daemon's own JSON logger at debug level, then
// every log line, every RPC response and every error string is searched for
// key material and bearer credentials. None may appear.
func TestNoSecretsLeak(t *testing.T) {
	logs := &lockedBuffer{}
	log := newLogger(&serveConfig{logLevel: zapcore.DebugLevel, logFormat: "json"}, logs)
	// Seed 34 makes a user without a OneDrive and malware-flagged files.
	opts := graphsim.Options{
		Seed: 34, Users: 3, Sites: 1, FilesPerDrive: 40, Apps: 3, MaxFileSize: 64 << 10,
		Limits: &generous, RecordCredentials: true,
		// Every fault that makes the agent write an error somewhere.
		Faults: graphsim.Faults{
			TransientErrorRate: 0.05, ConnectionResetRate: 0.03, ExpiredDownloadURLRate: 0.1,
			MalwareRate: 0.05, UnprovisionedOneDrives: 0.34,
		},
	}
	sim, err := graphsim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	// Taken now: one app is deleted from Entra later, and its key must
	// still be searched for.
	tenant := sim.Tenant()
	org, backupApps := tenant.Apps[0], tenant.Apps[1:]
	if !org.OrganizationApp || len(backupApps) != 2 {
		t.Fatalf("graphsim apps: %+v", tenant.Apps)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// The agent runs as in production: TLS with bearer tokens.
	ca := authtest.NewCA(t, "agent CA")
	serverLeaf := ca.Server(t)
	operator, auditor, wrongToken := randomToken(t), randomToken(t), randomToken(t)
	tokenFile := authtest.WriteFile(t, t.TempDir(), "tokens",
		[]byte("operator read,write "+operator+"\nauditor read "+auditor+"\n"), 0o600)
	tokens, err := auth.LoadTokens(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	sec := agent.Security{TLS: auth.ServerTLS(serverLeaf.TLS, nil), Tokens: tokens}
	dataDir := t.TempDir()
	e := &e2e{t: t, sim: sim, opts: opts}
	ag := startSecure(e, log, dataDir, sec, ca, operator)
	tr := &transcript{t: t}

	// Before any app: refused.
	_, err = e.jobs.SubmitJob(ctx, &pb.SubmitJobRequest{JobId: "too-early", TenantId: tenant.ID,
		Source: &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: tenant.Users[0].UserPrincipalName}}})
	tr.fail("SubmitJob without apps", err, codes.FailedPrecondition)
	_, err = e.pool.CreateApplication(ctx, &pb.CreateApplicationRequest{TenantId: tenant.ID, Count: 1})
	tr.fail("CreateApplication without an organization app", err, codes.FailedPrecondition)

	// Certificates the pool must refuse without quoting them, and apps
	// Entra refuses a token (the token-failure errors).
	clientSecret := "sim8Q~" + randomToken(t)[:34] // the shape of an Entra client secret
	p12Password, p12Wrong := randomToken(t), randomToken(t)
	bundle := func(c *graphsim.AppCredential) []byte { return append(slices.Clone(c.CertPEM), c.KeyPEM...) }
	c1, c2 := backupApps[0].Credentials[0], backupApps[1].Credentials[0]
	pfx, err := pkcs12.Modern.Encode(c1.Key, c1.Cert, nil, p12Password)
	if err != nil {
		t.Fatal(err)
	}
	secretBlock := "-----BEGIN CLIENT SECRET-----\n" + base64.StdEncoding.EncodeToString([]byte(clientSecret)) + "\n-----END CLIENT SECRET-----\n"
	keyLines := strings.Split(string(c1.KeyPEM), "\n")
	truncatedKey := strings.Join(append(slices.Clone(keyLines[:3]), keyLines[5:]...), "\n")
	unknownApp := "5c1a8b2e-0d4f-4e6a-9b7c-3f2e1d0c9b8a"
	garbage := make([]byte, 700)
	rand.Read(garbage)
	for _, tc := range []struct {
		name     string
		tenantID string
		clientID string
		cert     []byte
		password string
		org      bool
		want     codes.Code
	}{
		{"binary garbage", tenant.ID, org.ClientID, garbage, "", true, codes.InvalidArgument},
		{"a client secret", tenant.ID, org.ClientID, []byte(clientSecret), "", true, codes.InvalidArgument},
		{"a client secret in a CERTIFICATE block", tenant.ID, org.ClientID, []byte("-----BEGIN CERTIFICATE-----\n" + clientSecret + "\n-----END CERTIFICATE-----\n"), "", true, codes.InvalidArgument},
		{"a client secret as a PEM block", tenant.ID, org.ClientID, []byte(secretBlock), "", true, codes.InvalidArgument},
		{"a key without its certificate", tenant.ID, org.ClientID, c1.KeyPEM, "", true, codes.InvalidArgument},
		{"the key of another certificate", tenant.ID, org.ClientID, append(slices.Clone(c1.CertPEM), c2.KeyPEM...), "", true, codes.InvalidArgument},
		{"two keys", tenant.ID, org.ClientID, append(bundle(c1), c2.KeyPEM...), "", true, codes.InvalidArgument},
		{"a truncated key", tenant.ID, org.ClientID, append(slices.Clone(c1.CertPEM), truncatedKey...), "", true, codes.InvalidArgument},
		{"PKCS#12 with a wrong password", tenant.ID, org.ClientID, pfx, p12Wrong, true, codes.InvalidArgument},
		{"a tenant that is no GUID", "contoso", org.ClientID, bundle(org.Credentials[0]), "", true, codes.InvalidArgument},
		{"a backup app before the organization app", tenant.ID, backupApps[0].ClientID, bundle(c1), "", false, codes.FailedPrecondition},
		{"an app Entra does not know", tenant.ID, unknownApp, pfx, p12Password, true, codes.FailedPrecondition},
		{"a certificate Entra does not know for the app", tenant.ID, org.ClientID, bundle(c1), "", true, codes.FailedPrecondition},
	} {
		_, err := e.pool.AddApplication(ctx, &pb.AddApplicationRequest{TenantId: tc.tenantID, ClientId: tc.clientID,
			Certificate: tc.cert, CertificatePassword: tc.password, OrganizationApp: tc.org})
		tr.fail("AddApplication with "+tc.name, err, tc.want)
	}

	for _, app := range tenant.Apps {
		resp, err := e.pool.AddApplication(ctx, &pb.AddApplicationRequest{TenantId: tenant.ID, ClientId: app.ClientID,
			DisplayName: app.DisplayName, Certificate: bundle(app.Credentials[0]), OrganizationApp: app.OrganizationApp})
		tr.ok("AddApplication", resp, err)
	}
	_, err = e.pool.AddApplication(ctx, &pb.AddApplicationRequest{TenantId: tenant.ID, ClientId: backupApps[0].ClientID, Certificate: bundle(c1)})
	tr.fail("AddApplication twice", err, codes.AlreadyExists)
	// Directory calls see graphsim's faults and CreateApplication does not
	// retry them: its caller does, and each failure is one more error text.
	for attempt := 1; ; attempt++ {
		resp, err := e.pool.CreateApplication(ctx, &pb.CreateApplicationRequest{TenantId: tenant.ID, DisplayName: "created", Count: 1})
		if err == nil {
			tr.ok("CreateApplication", resp, nil)
			break
		}
		tr.err("CreateApplication", err)
		if attempt == 5 {
			t.Fatalf("CreateApplication failed %d times; last: %v", attempt, err)
		}
	}
	info, err := pb.NewAgentServiceClient(e.conn).GetAgentInfo(ctx, &pb.GetAgentInfoRequest{})
	tr.ok("GetAgentInfo", info, err)
	apps, err := e.pool.ListApplications(ctx, &pb.ListApplicationsRequest{TenantId: tenant.ID})
	tr.ok("ListApplications", apps, err)

	// The full backup: every drive, users without a OneDrive, and sources
	// that do not exist (failed jobs).
	reqs := simJobRequests(sim)
	for _, u := range tenant.Users {
		if !u.HasOneDrive {
			reqs = append(reqs, &pb.SubmitJobRequest{TenantId: tenant.ID, Source: &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: u.UserPrincipalName}}})
		}
	}
	reqs = append(reqs,
		&pb.SubmitJobRequest{TenantId: tenant.ID, Source: &pb.SubmitJobRequest_Onedrive{Onedrive: &pb.OneDriveSource{User: "nobody@" + tenant.Domain}}},
		&pb.SubmitJobRequest{TenantId: tenant.ID, Source: &pb.SubmitJobRequest_SharepointSite{SharepointSite: &pb.SharePointSiteSource{Site: "https://" + tenant.SharePointHost + "/sites/nowhere"}}})
	if len(reqs) == len(simJobRequests(sim))+2 {
		t.Fatal("graphsim made no user without a OneDrive")
	}
	full := tr.runJobs(ctx, e.jobs, "full", reqs)
	states := map[pb.JobState]int{}
	for _, j := range full {
		states[j.State]++
	}
	if states[pb.JobState_JOB_STATE_FAILED] < 2 || states[pb.JobState_JOB_STATE_PARTIALLY_SUCCEEDED] == 0 || states[pb.JobState_JOB_STATE_SUCCEEDED] == 0 {
		t.Fatalf("job states %v: want failed, partially succeeded and succeeded jobs", states)
	}
	conflicting := proto.Clone(reqs[0]).(*pb.SubmitJobRequest)
	conflicting.Mode = pb.BackupMode_BACKUP_MODE_FULL
	_, err = e.jobs.SubmitJob(ctx, conflicting)
	tr.fail("SubmitJob with a used id", err, codes.AlreadyExists)
	_, err = e.jobs.SubmitJob(ctx, &pb.SubmitJobRequest{JobId: "no-source", TenantId: tenant.ID})
	tr.fail("SubmitJob without a source", err, codes.InvalidArgument)
	for _, j := range full {
		resp, err := e.jobs.GetJob(ctx, &pb.GetJobRequest{JobId: j.JobId})
		tr.ok("GetJob", resp, err)
	}
	_, err = e.jobs.GetJob(ctx, &pb.GetJobRequest{JobId: "no-such-job"})
	tr.fail("GetJob of an unknown id", err, codes.NotFound)
	tr.listJobs(ctx, e.jobs)
	_, err = e.jobs.ListJobs(ctx, &pb.ListJobsRequest{PageToken: "forged"})
	tr.fail("ListJobs with a forged page token", err, codes.InvalidArgument)
	watchStream, err := e.jobs.WatchJob(ctx, &pb.WatchJobRequest{JobId: "no-such-job"})
	if err == nil {
		_, err = watchStream.Recv()
	}
	tr.fail("WatchJob of an unknown id", err, codes.NotFound)
	_, err = e.jobs.CancelJob(ctx, &pb.CancelJobRequest{JobId: "no-such-job"})
	tr.fail("CancelJob of an unknown id", err, codes.NotFound)

	// The catalog.
	rps, err := e.catalog.ListRestorePoints(ctx, &pb.ListRestorePointsRequest{TenantId: tenant.ID})
	tr.ok("ListRestorePoints", rps, err)
	read := 0
	for _, rp := range rps.GetRestorePoints() {
		for _, it := range tr.listItems(ctx, e.catalog, rp.RestorePointId) {
			if !it.Folder && it.Size > 0 && it.Size < 16<<10 && read < 3 {
				tr.readItem(ctx, e.catalog, rp.RestorePointId, it.ItemId)
				read++
			}
		}
	}
	if read == 0 {
		t.Fatal("no item read back")
	}
	verify, err := e.catalog.VerifyRepository(ctx, &pb.VerifyRepositoryRequest{ReadData: true})
	tr.ok("VerifyRepository", verify, err)
	_, err = e.catalog.ListItems(ctx, &pb.ListItemsRequest{RestorePointId: "rp-999"})
	tr.fail("ListItems of an unknown restore point", err, codes.NotFound)
	_, err = e.catalog.ListItems(ctx, &pb.ListItemsRequest{RestorePointId: rps.GetRestorePoints()[0].RestorePointId, PageToken: "forged"})
	tr.fail("ListItems with a forged page token", err, codes.InvalidArgument)
	readStream, err := e.catalog.ReadItem(ctx, &pb.ReadItemRequest{RestorePointId: rps.GetRestorePoints()[0].RestorePointId, ItemId: "nope"})
	if err == nil {
		_, err = readStream.Recv()
	}
	tr.fail("ReadItem of an unknown item", err, codes.NotFound)

	// Callers the agent refuses, each with credentials that must not be echoed.
	anon := ag.dial(ca)
	anonInfo := pb.NewAgentServiceClient(anon)
	basic := base64.StdEncoding.EncodeToString([]byte("operator:" + wrongToken))
	for _, tc := range []struct {
		name string
		ctx  context.Context
		opts []grpc.CallOption
		want codes.Code
	}{
		{"no credentials", ctx, nil, codes.Unauthenticated},
		{"an unknown token", ctx, []grpc.CallOption{grpc.PerRPCCredentials(bearerToken(wrongToken))}, codes.Unauthenticated},
		{"basic authentication", metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+basic), nil, codes.Unauthenticated},
		{"two tokens", metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+operator, "authorization", "Bearer "+auditor), nil, codes.Unauthenticated},
	} {
		_, err := anonInfo.GetAgentInfo(tc.ctx, &pb.GetAgentInfoRequest{}, tc.opts...)
		tr.fail("GetAgentInfo with "+tc.name, err, tc.want)
	}
	_, err = pb.NewJobServiceClient(anon).SubmitJob(ctx, reqs[0], grpc.PerRPCCredentials(bearerToken(auditor)))
	tr.fail("SubmitJob by a reader", err, codes.PermissionDenied)
	resp, err := anonInfo.GetAgentInfo(ctx, &pb.GetAgentInfoRequest{}, grpc.PerRPCCredentials(bearerToken(auditor)))
	tr.ok("GetAgentInfo by a reader", resp, err)
	anon.Close()
	// A token sent in the clear is refused, and must not be logged either.
	plain := agent.NewServer(log, agent.DefaultLimits(), agent.Security{}, agent.Services{})
	plainLis := bufconn.Listen(1 << 16)
	go plain.Serve(plainLis)
	plainConn, err := grpc.NewClient("passthrough:///plain",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return plainLis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bearerToken(operator)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = pb.NewAgentServiceClient(plainConn).GetAgentInfo(ctx, &pb.GetAgentInfoRequest{})
	tr.fail("GetAgentInfo with a token over plaintext", err, codes.Unauthenticated)
	plainConn.Close()
	plain.Shutdown(ctx)

	// Token acquisition fails in the middle of backups: a backup app is
	// deleted from Entra, and after a restart (which forgets cached tokens)
	// the schedulers ask Entra for its token while jobs run.
	victim := backupApps[1]
	deleteEntraApp(t, ctx, sim, e.agent, org.ClientID, victim.ClientID)
	e.stop()
	sim.ExpireDeltaTokens() // and every drive must be crawled in full again
	startSecure(e, log, dataDir, sec, ca, operator)
	inc := tr.runJobs(ctx, e.jobs, "inc", simJobRequests(sim))
	for _, j := range inc {
		if j.State != pb.JobState_JOB_STATE_SUCCEEDED && j.State != pb.JobState_JOB_STATE_PARTIALLY_SUCCEEDED {
			t.Errorf("incremental job %s with an app failing: %v, %s", j.JobId, j.State, j.Error)
		}
	}
	victimApp, err := e.agent.pool.App(tenant.ID, victim.ClientID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = victimApp.Token(ctx)
	if err == nil {
		t.Fatal("the app deleted from Entra still gets tokens")
	}
	tr.errText("pool.App.Token of the deleted app", err.Error())
	apps, err = e.pool.ListApplications(ctx, &pb.ListApplicationsRequest{TenantId: tenant.ID})
	tr.ok("ListApplications after the deletion", apps, err)
	if i := slices.IndexFunc(apps.GetApplications(), func(a *pb.Application) bool { return a.ClientId == victim.ClientID }); i < 0 ||
		apps.Applications[i].State != pb.ApplicationState_APPLICATION_STATE_FAILED || !strings.Contains(apps.Applications[i].StateReason, "AADSTS") {
		t.Fatalf("the deleted app is not listed as failing with Entra's reason: %v", apps.GetApplications())
	}
	info, err = pb.NewAgentServiceClient(e.conn).GetAgentInfo(ctx, &pb.GetAgentInfoRequest{})
	tr.ok("GetAgentInfo after the restart", info, err)
	page := httptest.NewRecorder()
	metrics.NewServer(zap.NewNop(), e.agent.metrics).Handler.ServeHTTP(page, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if page.Code != http.StatusOK || !strings.Contains(page.Body.String(), "backup_proxy_app_requests_total") {
		t.Fatalf("metrics page: %d %.200s", page.Code, page.Body.String())
	}
	// Stopped before reading the log: nothing may write to it meanwhile.
	e.stop()

	// What a client or an operator sees.
	corpus := map[string]string{
		"log":       logs.String(),
		"responses": tr.responses.String(),
		"errors":    tr.errors.String(),
		"metrics":   page.Body.String(),
	}
	checkCorpus(t, corpus)

	// The secrets: every private key the agent held or was shown, every
	// bearer credential that crossed the wire, and the passwords and
	// client secret the refused calls carried.
	m := newMatcher()
	keys := map[string][]byte{"agent TLS key": serverLeaf.KeyPEM}
	for _, a := range tenant.Apps {
		for i, c := range a.Credentials {
			keys[fmt.Sprintf("key %d of %s", i, a.DisplayName)] = c.KeyPEM
		}
	}
	stored, err := filepath.Glob(filepath.Join(dataDir, "pool", "keys", "*.pem"))
	if err != nil || len(stored) != len(tenant.Apps)+1 { // graphsim's apps and the created one
		t.Fatalf("pool key files: %v, %v", stored, err)
	}
	for _, f := range stored {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		keys["pool key file "+filepath.Base(f)] = b
	}
	for name, k := range keys {
		m.add(name, keyNeedles(t, k)...)
	}
	issued := sim.IssuedCredentials()
	if len(issued.AccessTokens) < len(tenant.Apps) || len(issued.ClientAssertions) <= len(issued.AccessTokens) || len(issued.TempAuths) < 100 {
		t.Fatalf("graphsim recorded %d access tokens, %d client assertions, %d tempauths: the session did not run as meant",
			len(issued.AccessTokens), len(issued.ClientAssertions), len(issued.TempAuths))
	}
	for i, tok := range issued.AccessTokens {
		m.add(fmt.Sprintf("access token %d", i), jwtNeedles(tok)...)
	}
	for i, a := range issued.ClientAssertions {
		m.add(fmt.Sprintf("client assertion %d", i), jwtNeedles(a)...)
	}
	for i, ta := range issued.TempAuths {
		m.add(fmt.Sprintf("download tempauth %d", i), jwtNeedles(ta)...)
	}
	m.add("agent token of operator", operator)
	m.add("agent token of auditor", auditor)
	m.add("unknown agent token", wrongToken)
	m.add("basic credentials", basic)
	m.add("client secret", clientSecret, base64.StdEncoding.EncodeToString([]byte(clientSecret)))
	m.add("PKCS#12 password", p12Password)
	m.add("wrong PKCS#12 password", p12Wrong)

	selfCheck(t, m, c1, "key 0 of "+backupApps[0].DisplayName, issued, operator, dataDir)

	for name, text := range corpus {
		for _, h := range m.find(text) {
			t.Errorf("%s line %d: %s after %q", name, h.line, h.secret, h.before)
		}
	}
	t.Logf("%d Graph requests; searched %d keys, %d access tokens, %d client assertions and %d tempauths (%d needles) in %d log lines, %d bytes of responses, %d bytes of errors, %d bytes of metrics",
		sim.Stats().Tenant.Requests, len(keys), len(issued.AccessTokens), len(issued.ClientAssertions), len(issued.TempAuths), m.needles,
		strings.Count(corpus["log"], "\n"), len(corpus["responses"]), len(corpus["errors"]), len(corpus["metrics"]))
}

// checkCorpus makes sure the texts are what the search must cover, so
// that finding nothing in them means something.
func checkCorpus(t *testing.T, corpus map[string]string) {
	t.Helper()
	log := corpus["log"]
	if n := strings.Count(log, "\n"); n < 100 {
		t.Fatalf("the log has %d lines", n)
	}
	for _, want := range []string{
		`"level":"debug","ts":`,                    // debug level is on
		`"logger":"grpc","msg":"rpc"`,              // the interceptor's lines
		`"msg":"transient error, retrying"`,        // the scheduler's debug lines
		`"msg":"application taken out of rotation`, // a token request failed mid-job
		`"msg":"rpc refused"`,                      // authentication failures
		`AADSTS700016`,                             // Entra refused an unknown app
		`AADSTS700027`,                             // and an unknown certificate
		`"msg":"delta token expired`,               // dead delta tokens
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
	for _, want := range []string{"malware", `"state":"JOB_STATE_FAILED"`, `"failedItems"`, "APPLICATION_STATE_FAILED"} {
		if !strings.Contains(corpus["responses"], want) {
			t.Errorf("the responses lack %s", want)
		}
	}
	for _, want := range []string{"client secret", "PKCS#12 password", "AADSTS", "Unauthenticated", "PermissionDenied"} {
		if !strings.Contains(corpus["errors"], want) {
			t.Errorf("the errors lack %s", want)
		}
	}
}

// selfCheck plants secrets in the forms a leak would take and checks the
// matcher reports each, and reports nothing in public material: the search
// must be able to fail.
func selfCheck(t *testing.T, m *matcher, cred *graphsim.AppCredential, keyName string, issued graphsim.BearerCredentials, agentToken, dataDir string) {
	t.Helper()
	der, _ := pem.Decode(cred.KeyPEM)
	body := strings.Split(string(cred.KeyPEM), "\n")[7]
	logLine, _ := json.Marshal(map[string]string{"level": "error", "msg": "add", "certificate": string(cred.CertPEM) + string(cred.KeyPEM)})
	tok, assertion, ta := issued.AccessTokens[0], issued.ClientAssertions[0], issued.TempAuths[0]
	for _, tc := range []struct{ name, text, want string }{
		{"a PEM key in a JSON log line", string(logLine), "PEM private key"},
		{"a PEM key in a JSON log line", string(logLine), keyName},
		{"part of one line of a PEM key", "x" + body[5:45] + "x", keyName},
		{"%v of the key", fmt.Sprint(cred.Key), keyName},
		{"the key's DER in a larger base64 blob", base64.StdEncoding.EncodeToString(append([]byte{7}, der.Bytes...)), keyName},
		{"the key's DER in upper-case hex", fmt.Sprintf("%X", der.Bytes), keyName},
		{"an Authorization header", "Authorization: Bearer " + tok, "access token"},
		{"an Authorization header", "Authorization: Bearer " + tok, "Bearer credential"},
		{"an access token's signature", `"sig":"` + tok[strings.LastIndexByte(tok, '.')+1:] + `"`, "access token"},
		{"a client assertion's signature", "x" + assertion[strings.LastIndexByte(assertion, '.')+1:], "client assertion"},
		{"a download URL", "GET https://tenant.sharepoint.com/_layouts/15/download.aspx?UniqueId=1&tempauth=" + ta + "&ApiVersion=2.0", "download tempauth"},
		{"an agent token", "token=" + agentToken + ";", "agent token of operator"},
	} {
		hits := m.find(tc.text)
		if !slices.ContainsFunc(hits, func(h hit) bool { return strings.Contains(h.secret, tc.want) }) {
			t.Errorf("self-check: %s planted, no %q found (found %v)", tc.name, tc.want, hits)
		}
	}
	poolJSON, err := os.ReadFile(filepath.Join(dataDir, "pool", "pool.json"))
	if err != nil {
		t.Fatal(err)
	}
	public := string(cred.CertPEM) + cred.Thumbprint + string(poolJSON) + tok[:strings.LastIndexByte(tok, '.')] +
		"authorization must be \"Bearer <token>\"; a bearer token was sent over a connection without TLS"
	if hits := m.find(public); len(hits) != 0 {
		t.Errorf("self-check: public material reported as secret: %v", hits)
	}
}

// deleteEntraApp deletes an app registration through Graph, as an
// administrator would, with the organization app's token.
func deleteEntraApp(t *testing.T, ctx context.Context, sim *graphsim.Server, a *assembled, orgClientID, clientID string) {
	t.Helper()
	orgApp, err := a.pool.App(sim.Tenant().ID, orgClientID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := orgApp.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// graphsim's faults hit directory calls too.
	for attempt := 1; ; attempt++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, sim.GraphURL()+"/v1.0/applications(appId='"+clientID+"')", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		res, err := sim.HTTPClient().Do(req)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusNoContent {
				return
			}
			err = errors.New(res.Status)
		}
		if attempt == 5 {
			t.Fatalf("delete app %s: %v", clientID, err)
		}
	}
}

// secureAgent is the listener of an agent started by startSecure.
type secureAgent struct {
	t   *testing.T
	lis *bufconn.Listener
}

// startSecure is e2e.start with the given logger and transport security:
// e's clients authenticate with token over TLS.
func startSecure(e *e2e, log *zap.Logger, dataDir string, sec agent.Security, ca *authtest.CA, token string) *secureAgent {
	t := e.t
	a, err := assemble(log, agentConfig{
		dataDir: dataDir, graphURL: e.sim.GraphURL(), loginURL: e.sim.LoginURL(), roots: e.sim.CertPool(),
		maxJobs: 4, maxQueuedJobs: 100, downloadsPerJob: 4, security: sec,
		scheduler: scheduler.Config{Limits: scheduler.Limits{AppPerMinute: generous.AppPerMinute, AppPer24h: generous.AppPer24h, TenantPer5Min: generous.TenantPer5Min}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ag := &secureAgent{t: t, lis: bufconn.Listen(1 << 20)}
	go a.server.Serve(ag.lis)
	conn := ag.dial(ca, grpc.WithPerRPCCredentials(bearerToken(token)))
	e.agent, e.conn = a, conn
	e.pool, e.jobs, e.catalog = pb.NewPoolServiceClient(conn), pb.NewJobServiceClient(conn), pb.NewCatalogServiceClient(conn)
	t.Cleanup(e.stop)
	return ag
}

// dial connects over TLS, trusting ca.
func (ag *secureAgent) dial(ca *authtest.CA, opts ...grpc.DialOption) *grpc.ClientConn {
	conn, err := grpc.NewClient("passthrough:///agent", append([]grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ag.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"})),
	}, opts...)...)
	if err != nil {
		ag.t.Fatal(err)
	}
	return conn
}

// bearerToken sends "authorization: Bearer <token>" with every call. It
// does not require TLS: the test also sends one in the clear, which the
// agent must refuse.
type bearerToken string

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearerToken) RequireTransportSecurity() bool { return false }

func randomToken(t *testing.T) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// lockedBuffer is the log's destination; the test reads it while the
// agent's goroutines may still write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// transcript is everything the agent answered: responses as protojson,
// errors as their full status (message and details) in protojson.
type transcript struct {
	t                 *testing.T
	responses, errors strings.Builder
}

func (tr *transcript) ok(what string, m proto.Message, err error) {
	tr.t.Helper()
	if err != nil {
		tr.t.Fatalf("%s: %v", what, err)
	}
	b, err := protojson.Marshal(m)
	if err != nil {
		tr.t.Fatalf("%s: marshal response: %v", what, err)
	}
	fmt.Fprintf(&tr.responses, "%s: %s\n", what, b)
}

// fail records the error of a call that must fail with code want.
func (tr *transcript) fail(what string, err error, want codes.Code) {
	tr.t.Helper()
	if got := status.Code(err); got != want {
		tr.t.Fatalf("%s: %v, want %v", what, err, want)
	}
	tr.err(what, err)
}

func (tr *transcript) err(what string, err error) {
	tr.t.Helper()
	st := status.Convert(err)
	b, merr := protojson.Marshal(st.Proto())
	if merr != nil {
		tr.t.Fatalf("%s: marshal status: %v", what, merr)
	}
	fmt.Fprintf(&tr.errors, "%s: %s %s\n", what, st.Code(), b)
}

// errText records an error string of the process that is no RPC's.
func (tr *transcript) errText(what, text string) {
	fmt.Fprintf(&tr.errors, "%s: %s\n", what, text)
}

// runJobs submits the jobs and records every message of their watches.
func (tr *transcript) runJobs(ctx context.Context, jobs pb.JobServiceClient, prefix string, reqs []*pb.SubmitJobRequest) []*pb.Job {
	tr.t.Helper()
	for i, r := range reqs {
		r.JobId = fmt.Sprintf("%s-%d", prefix, i+1)
		resp, err := jobs.SubmitJob(ctx, r)
		tr.ok("SubmitJob", resp, err)
	}
	var out []*pb.Job
	for _, r := range reqs {
		stream, err := jobs.WatchJob(ctx, &pb.WatchJobRequest{JobId: r.JobId})
		if err != nil {
			tr.t.Fatal(err)
		}
		var last *pb.Job
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			tr.ok("WatchJob "+r.JobId, resp, err)
			last = resp.Job
		}
		out = append(out, last)
	}
	return out
}

func (tr *transcript) listJobs(ctx context.Context, jobs pb.JobServiceClient) {
	tr.t.Helper()
	token := ""
	for {
		resp, err := jobs.ListJobs(ctx, &pb.ListJobsRequest{PageSize: 3, PageToken: token})
		tr.ok("ListJobs", resp, err)
		if token = resp.NextPageToken; token == "" {
			return
		}
	}
}

func (tr *transcript) listItems(ctx context.Context, catalog pb.CatalogServiceClient, rp string) []*pb.Item {
	tr.t.Helper()
	var out []*pb.Item
	token := ""
	for {
		resp, err := catalog.ListItems(ctx, &pb.ListItemsRequest{RestorePointId: rp, PageSize: 50, PageToken: token})
		tr.ok("ListItems", resp, err)
		out = append(out, resp.Items...)
		if token = resp.NextPageToken; token == "" {
			return out
		}
	}
}

func (tr *transcript) readItem(ctx context.Context, catalog pb.CatalogServiceClient, rp, itemID string) {
	tr.t.Helper()
	stream, err := catalog.ReadItem(ctx, &pb.ReadItemRequest{RestorePointId: rp, ItemId: itemID})
	if err != nil {
		tr.t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return
		}
		tr.ok("ReadItem", resp, err)
	}
}

// The matcher finds many secrets in a text in one pass. A secret is known
// by needles: fragments any printing of it contains. Every needle is at
// least minNeedle bytes, too long to occur by chance, and is indexed by
// its first minNeedle bytes.
const minNeedle = 16

type needle struct{ text, secret string }

type matcher struct {
	byPrefix map[string][]needle
	needles  int
	// patterns are secrets recognised by their form, whatever their value.
	patterns []pattern
}

type pattern struct {
	name string
	re   *regexp.Regexp
}

// hit is a secret found on a line; before is the text that precedes it
// there, which shows where it leaked without repeating it.
type hit struct {
	secret string
	line   int
	before string
}

func newMatcher() *matcher {
	return &matcher{byPrefix: map[string][]needle{}, patterns: []pattern{
		{"PEM private key", regexp.MustCompile(`PRIVATE KEY-----`)},
		// A credential after "Bearer": prose ("a bearer token was sent")
		// and placeholders ("Bearer <token>") do not match.
		{"Bearer credential", regexp.MustCompile(`(?i)bearer\s+[A-Za-z0-9._~+/=-]{16,}`)},
	}}
}

func (m *matcher) add(secret string, needles ...string) {
	for _, n := range needles {
		if len(n) < minNeedle {
			panic(fmt.Sprintf("needle of %s has %d bytes; at least %d are needed", secret, len(n), minNeedle))
		}
		m.byPrefix[n[:minNeedle]] = append(m.byPrefix[n[:minNeedle]], needle{n, secret})
		m.needles++
	}
}

// find reports every secret in text, once per secret and line.
func (m *matcher) find(text string) []hit {
	var lineStarts []int
	for i := range len(text) {
		if i == 0 || text[i-1] == '\n' {
			lineStarts = append(lineStarts, i)
		}
	}
	seen := map[hit]bool{}
	var out []hit
	report := func(secret string, at int) {
		line := sort.Search(len(lineStarts), func(i int) bool { return lineStarts[i] > at }) - 1
		h := hit{secret: secret, line: line + 1, before: text[max(lineStarts[line], at-60):at]}
		key := hit{secret: secret, line: h.line}
		if !seen[key] && len(out) < 50 {
			seen[key] = true
			out = append(out, h)
		}
	}
	for i := 0; i+minNeedle <= len(text); i++ {
		for _, n := range m.byPrefix[text[i:i+minNeedle]] {
			if strings.HasPrefix(text[i:], n.text) {
				report(n.secret, i)
			}
		}
	}
	for _, p := range m.patterns {
		for _, loc := range p.re.FindAllStringIndex(text, -1) {
			report(p.name, loc[0])
		}
	}
	return out
}

// jwtNeedles are a JWT-shaped credential (access token, client assertion,
// tempauth) whole and its signature part, the part no one else can make.
func jwtNeedles(tok string) []string {
	out := []string{tok}
	if sig := tok[strings.LastIndexByte(tok, '.')+1:]; sig != tok && len(sig) >= minNeedle {
		out = append(out, sig)
	}
	return out
}

// keyNeedles are fragments of a PEM private key that any printing of it
// contains: windows of its DER in base64 (standard and URL alphabets) at
// each of the three byte alignments, so that a key inside a larger blob is
// found too; windows of the DER in hex; and windows of the private numbers
// in decimal and hex, which is how %v prints a key. Windows that also occur
// in the public key's encodings are left out: the public key is no secret
// (a certificate shows it) and the private key's DER contains it.
func keyNeedles(t *testing.T, keyPEM []byte) []string {
	t.Helper()
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		t.Fatal("not a PEM key")
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var private []*big.Int
	var public [][]byte
	switch k := key.(type) {
	case *rsa.PrivateKey:
		private = append([]*big.Int{k.D, k.Precomputed.Dp, k.Precomputed.Dq, k.Precomputed.Qinv}, k.Primes...)
		public = append(public, x509.MarshalPKCS1PublicKey(&k.PublicKey))
	case *ecdsa.PrivateKey:
		d, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		private = append(private, new(big.Int).SetBytes(d))
	default:
		t.Fatalf("key of type %T", key)
	}
	pkix, err := x509.MarshalPKIXPublicKey(key.(crypto.Signer).Public())
	if err != nil {
		t.Fatal(err)
	}
	public = append(public, pkix)
	var publicText strings.Builder
	for _, p := range public {
		for _, s := range encodings(p) {
			publicText.WriteString(s + "\n")
		}
	}
	var out []string
	add := func(s string, size, step int) {
		for i := 0; i+size <= len(s); i += step {
			w := s[i : i+size]
			if !strings.Contains(w, "=") && !strings.Contains(publicText.String(), w) {
				out = append(out, w)
			}
		}
	}
	for _, s := range encodings(blk.Bytes) {
		add(s, 24, 12)
	}
	for _, n := range private {
		add(n.String(), 24, 12)
		add(n.Text(16), 32, 16)
	}
	return out
}

// encodings are b in base64 (both alphabets, three alignments) and hex
// (both cases).
func encodings(b []byte) []string {
	var out []string
	for a := range 3 {
		out = append(out, base64.StdEncoding.EncodeToString(b[a:]), base64.URLEncoding.EncodeToString(b[a:]))
	}
	return append(out, hex.EncodeToString(b), strings.ToUpper(hex.EncodeToString(b)))
}
