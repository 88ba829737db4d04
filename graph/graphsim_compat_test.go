package graph_test

import (
	"context"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	kauth "github.com/microsoft/kiota-authentication-azure-go"
	khttp "github.com/microsoft/kiota-http-go"
	msgraph "github.com/microsoftgraph/msgraph-sdk-go"
	msgraphcore "github.com/microsoftgraph/msgraph-sdk-go-core"
	"github.com/microsoftgraph/msgraph-sdk-go/drives"

	"github.com/backup-proxy/backup-proxy/graphsim"
)

// These tests prove graphsim is compatible with the real clients: azidentity
// (MSAL Go underneath) gets a token with a certificate, and msgraph-sdk-go
// with its default middleware reads sites, drives, a whole delta and an item.
// Only the base URLs and the trusted CA differ from production.

const compatScope = "https://graph.microsoft.com/.default"

func newCompatSim(t *testing.T) *graphsim.Server {
	t.Helper()
	s, err := graphsim.New(graphsim.Options{Seed: 42, Users: 3, Sites: 3, FilesPerDrive: 40, MaxFileSize: 32 << 10,
		Apps: 2, NoThrottle: true})
	if err != nil {
		t.Fatalf("graphsim: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func compatCredential(t *testing.T, s *graphsim.Server, transport policy.Transporter, instanceDiscovery bool) azcore.TokenCredential {
	t.Helper()
	app := s.Tenant().Apps[1]
	certs, key, err := azidentity.ParseCertificates(append(app.Credentials[0].CertPEM, app.Credentials[0].KeyPEM...), nil)
	if err != nil {
		t.Fatalf("parse certificate: %v", err)
	}
	cred, err := azidentity.NewClientCertificateCredential(s.Tenant().ID, app.ClientID, certs, key,
		&azidentity.ClientCertificateCredentialOptions{
			ClientOptions: azcore.ClientOptions{
				Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: s.LoginURL()},
				Transport: transport,
			},
			DisableInstanceDiscovery: !instanceDiscovery,
		})
	if err != nil {
		t.Fatalf("credential: %v", err)
	}
	return cred
}

func TestAzidentityTokenFromGraphsim(t *testing.T) {
	s := newCompatSim(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("instance discovery disabled", func(t *testing.T) {
		cred := compatCredential(t, s, &http.Client{Transport: s.Transport()}, false)
		tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{compatScope}})
		if err != nil {
			t.Fatalf("GetToken: %v", err)
		}
		if tok.Token == "" || time.Until(tok.ExpiresOn) < 50*time.Minute {
			t.Fatalf("token %+v", tok)
		}
	})

	t.Run("instance discovery through login.microsoftonline.com", func(t *testing.T) {
		// MSAL asks login.microsoftonline.com/common/discovery/instance about
		// an authority it does not know; route that host to graphsim.
		tr := s.Transport()
		var d net.Dialer
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, s.Addr())
		}
		rec := &compatRecordingTransport{next: tr}
		cred := compatCredential(t, s, &http.Client{Transport: rec}, true)
		if _, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{compatScope}}); err != nil {
			t.Fatalf("GetToken with instance discovery: %v", err)
		}
		want := []string{
			"GET login.microsoftonline.com/common/discovery/instance",
			"GET " + s.Addr() + "/" + s.Tenant().ID + "/v2.0/.well-known/openid-configuration",
			"POST " + s.Addr() + "/" + s.Tenant().ID + "/oauth2/v2.0/token",
		}
		// MSAL may ask for the instance metadata more than once.
		if got := slices.Compact(rec.requests); !slices.Equal(got, want) {
			t.Fatalf("requests %q, want %q", rec.requests, want)
		}
	})
}

type compatRecordingTransport struct {
	next     http.RoundTripper
	mu       sync.Mutex
	requests []string
}

func (r *compatRecordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.requests = append(r.requests, req.Method+" "+req.URL.Host+req.URL.Path)
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func TestMsgraphSDKAgainstGraphsim(t *testing.T) {
	s := newCompatSim(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	cred := compatCredential(t, s, &http.Client{Transport: s.Transport()}, false)
	auth, err := kauth.NewAzureIdentityAuthenticationProviderWithScopesAndValidHosts(cred, []string{compatScope}, []string{"127.0.0.1"})
	if err != nil {
		t.Fatalf("auth provider: %v", err)
	}
	opts := msgraph.GetDefaultClientOptions()
	httpClient := &http.Client{Transport: khttp.NewCustomTransportWithParentTransport(s.Transport(),
		msgraphcore.GetDefaultMiddlewaresWithOptions(&opts)...)}
	adapter, err := msgraph.NewGraphRequestAdapterWithParseNodeFactoryAndSerializationWriterFactoryAndHttpClient(auth, nil, nil, httpClient)
	if err != nil {
		t.Fatalf("request adapter: %v", err)
	}
	adapter.SetBaseUrl(s.GraphURL() + "/v1.0")
	client := msgraph.NewGraphServiceClient(adapter)
	tenant := s.Tenant()

	sites, err := client.Sites().GetAllSites().GetAsGetAllSitesGetResponse(ctx, nil)
	if err != nil {
		t.Fatalf("getAllSites: %v", err)
	}
	if len(sites.GetValue()) != len(tenant.Sites) {
		t.Fatalf("getAllSites: %d sites, want %d", len(sites.GetValue()), len(tenant.Sites))
	}
	site := sites.GetValue()[0]
	siteDrives, err := client.Sites().BySiteId(*site.GetId()).Drives().Get(ctx, nil)
	if err != nil {
		t.Fatalf("site drives: %v", err)
	}
	if len(siteDrives.GetValue()) != 1 || *siteDrives.GetValue()[0].GetDriveType() != "documentLibrary" {
		t.Fatalf("site drives: %d", len(siteDrives.GetValue()))
	}
	driveID := *siteDrives.GetValue()[0].GetId()

	// Page the whole delta to its deltaLink, following nextLinks as-is.
	want, err := s.DriveItems(driveID)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{} // id → quickXorHash
	builder := client.Drives().ByDriveId(driveID).Items().ByDriveItemId("root").Delta()
	top := int32(7)
	cfg := &drives.ItemItemsItemDeltaRequestBuilderGetRequestConfiguration{
		QueryParameters: &drives.ItemItemsItemDeltaRequestBuilderGetQueryParameters{Top: &top}}
	var deltaLink string
	pages := 0
	for ; deltaLink == ""; pages++ {
		if pages > 100 {
			t.Fatal("delta never reached a deltaLink")
		}
		page, err := builder.GetAsDeltaGetResponse(ctx, cfg)
		if err != nil {
			t.Fatalf("delta page %d: %v", pages, err)
		}
		for _, it := range page.GetValue() {
			h := ""
			if f := it.GetFile(); f != nil && f.GetHashes() != nil && f.GetHashes().GetQuickXorHash() != nil {
				h = *f.GetHashes().GetQuickXorHash()
			}
			seen[*it.GetId()] = h
		}
		switch {
		case page.GetOdataDeltaLink() != nil:
			deltaLink = *page.GetOdataDeltaLink()
		case page.GetOdataNextLink() != nil:
			builder = builder.WithUrl(*page.GetOdataNextLink())
			cfg = nil // the nextLink carries every parameter
		default:
			t.Fatal("delta page without nextLink or deltaLink")
		}
	}
	if len(seen) != len(want) || pages < 5 {
		t.Fatalf("delta: %d items in %d pages, drive has %d", len(seen), pages, len(want))
	}
	var file graphsim.Item
	for _, w := range want {
		if seen[w.ID] != w.QuickXorHash {
			t.Fatalf("item %s: quickXorHash %q, want %q", w.ID, seen[w.ID], w.QuickXorHash)
		}
		if !w.Folder {
			file = w
		}
	}

	item, err := client.Drives().ByDriveId(driveID).Items().ByDriveItemId(file.ID).Get(ctx, nil)
	if err != nil {
		t.Fatalf("get item: %v", err)
	}
	if *item.GetName() != file.Name || *item.GetSize() != file.Size || *item.GetFile().GetHashes().GetQuickXorHash() != file.QuickXorHash {
		t.Fatalf("item %s: name %s size %d", file.ID, *item.GetName(), *item.GetSize())
	}
	if dl, ok := item.GetAdditionalData()["@microsoft.graph.downloadUrl"]; !ok || dl == nil {
		t.Fatal("item without @microsoft.graph.downloadUrl")
	}
	if _, err := client.Drives().ByDriveId(driveID).Items().ByDriveItemId("01NOSUCHITEM").Get(ctx, nil); err == nil {
		t.Fatal("unknown item: no error")
	}
	users, err := client.Users().Get(ctx, nil)
	if err != nil || len(users.GetValue()) != len(tenant.Users) {
		t.Fatalf("users: %v", err)
	}
}
