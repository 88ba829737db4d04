package auth

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

const (
	readerToken   = "r-0123456789abcdef0123456789abcdef"
	operatorToken = "o-0123456789abcdef0123456789abcdef"
)

func testTokens(t *testing.T) *Tokens {
	t.Helper()
	tokens, err := parseTokens(strings.NewReader("reader read " + readerToken + "\noperator read,write " + operatorToken + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return tokens
}

// verified is the TLS state of a connection whose client certificate
// verified with the given subject.
func verified(cn string, orgs ...string) *tls.ConnectionState {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: cn, Organization: orgs}}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
}

func TestAuthenticate(t *testing.T) {
	secure := Secure(testTokens(t))
	tests := []struct {
		name    string
		policy  *Policy
		creds   Credentials
		want    Identity
		wantErr string
	}{
		{"plaintext trusts everyone", Open(), Credentials{}, Identity{Via: ViaPlaintext, Roles: Read | Write}, ""},
		{"token over plaintext", Open(), Credentials{Authorization: []string{"Bearer " + operatorToken}}, Identity{}, "without TLS"},
		{"token over plaintext to secure", secure, Credentials{Authorization: []string{"Bearer " + operatorToken}}, Identity{}, "without TLS"},
		{"nothing over TLS", secure, Credentials{TLS: &tls.ConnectionState{}}, Identity{Via: ViaNone}, ""},
		{"read-only certificate", secure, Credentials{TLS: verified("backup-reader", OrgRead)},
			Identity{Name: "backup-reader", Via: ViaCertificate, Roles: Read}, ""},
		{"operator certificate", secure, Credentials{TLS: verified("ops", "Contoso", OrgRead, OrgWrite)},
			Identity{Name: "ops", Via: ViaCertificate, Roles: Read | Write}, ""},
		{"certificate without roles", secure, Credentials{TLS: verified("nobody", "Contoso")},
			Identity{Name: "nobody", Via: ViaCertificate}, ""},
		{"unverified certificate", secure, Credentials{TLS: &tls.ConnectionState{PeerCertificates: verified("x", OrgWrite).PeerCertificates}},
			Identity{Via: ViaNone}, ""},
		{"token", secure, Credentials{TLS: &tls.ConnectionState{}, Authorization: []string{"Bearer " + readerToken}},
			Identity{Name: "reader", Via: ViaToken, Roles: Read}, ""},
		{"token wins over certificate", secure, Credentials{TLS: verified("ops", OrgRead, OrgWrite), Authorization: []string{"bearer " + readerToken}},
			Identity{Name: "reader", Via: ViaToken, Roles: Read}, ""},
		{"wrong token", secure, Credentials{TLS: verified("ops", OrgRead), Authorization: []string{"Bearer " + readerToken + "x"}}, Identity{}, "unknown bearer token"},
		{"basic scheme", secure, Credentials{TLS: &tls.ConnectionState{}, Authorization: []string{"Basic dXNlcjpwdw=="}}, Identity{}, "Bearer <token>"},
		{"two tokens", secure, Credentials{TLS: &tls.ConnectionState{}, Authorization: []string{"Bearer " + readerToken, "Bearer " + operatorToken}}, Identity{}, "more than one"},
		{"no token file", Secure(nil), Credentials{TLS: &tls.ConnectionState{}, Authorization: []string{"Bearer " + readerToken}}, Identity{}, "accepts no bearer tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.policy.Authenticate(tt.creds)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want unauthenticated with %q", err, tt.wantErr)
				}
				for _, tok := range []string{readerToken, operatorToken} {
					if strings.Contains(err.Error(), tok) {
						t.Fatalf("error %q contains the token", err)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Authenticate = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestAuthorize(t *testing.T) {
	p := Secure(nil)
	reader := Identity{Name: "r", Via: ViaCertificate, Roles: Read}
	writer := Identity{Name: "w", Via: ViaCertificate, Roles: Write}
	anonymous := Identity{Via: ViaNone}
	tests := []struct {
		name   string
		id     Identity
		method string
		want   string // "", "denied" or "unauthenticated"
	}{
		{"reader reads", reader, pb.JobService_GetJob_FullMethodName, ""},
		{"reader submits", reader, pb.JobService_SubmitJob_FullMethodName, "denied"},
		{"writer submits", writer, pb.JobService_SubmitJob_FullMethodName, ""},
		{"write does not imply read", writer, pb.JobService_GetJob_FullMethodName, "denied"},
		{"anonymous health", anonymous, "/grpc.health.v1.Health/Check", ""},
		{"anonymous reads", anonymous, pb.JobService_GetJob_FullMethodName, "unauthenticated"},
		{"unknown method", Identity{Via: ViaPlaintext, Roles: Read | Write}, "/backupproxy.v1.JobService/Nope", "denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.Authorize(tt.id, tt.method)
			var denied *DeniedError
			switch tt.want {
			case "":
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
			case "denied":
				if !errors.As(err, &denied) {
					t.Fatalf("err = %v, want DeniedError", err)
				}
			case "unauthenticated":
				if !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("err = %v, want ErrUnauthenticated", err)
				}
			}
		})
	}
}
