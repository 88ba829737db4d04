package graph_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/backup-proxy/backup-proxy/graph"
)

// pageTransport answers every request with one delta page body, as Graph
// would: 200, application/json.
type pageTransport struct{ body []byte }

func (p *pageTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/json; odata.metadata=minimal"}},
		ContentLength: int64(len(p.body)), Body: io.NopCloser(bytes.NewReader(p.body)), Request: r,
	}, nil
}

const fuzzPage = `{
  "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(driveItem)",
  "@odata.nextLink": "https://graph.microsoft.com/v1.0/drives/b!x/root/delta?token=MzslMjM0OyUyMzE",
  "value": [
    {"@odata.type": "#microsoft.graph.driveItem", "id": "01ROOT", "name": "root", "size": 1024,
     "createdDateTime": "2024-01-02T03:04:05Z", "lastModifiedDateTime": "2026-11-20T08:00:00Z",
     "eTag": "\"{ROOT},1\"", "cTag": "\"c:{ROOT},1\"", "root": {}, "folder": {"childCount": 2},
     "parentReference": {"driveType": "business", "driveId": "b!x"}},
    {"@odata.type": "#microsoft.graph.driveItem", "id": "01DOCS", "name": "Documents", "size": 1000,
     "folder": {"childCount": 1}, "parentReference": {"id": "01ROOT", "driveId": "b!x"}},
    {"@odata.type": "#microsoft.graph.driveItem", "id": "01FILE", "name": "report.docx", "size": 1000,
     "eTag": "\"{FILE},3\"", "cTag": "\"c:{FILE},2\"", "lastModifiedDateTime": "2026-11-21T09:30:00.123Z",
     "file": {"mimeType": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
              "hashes": {"quickXorHash": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}},
     "@microsoft.graph.downloadUrl": "https://contoso.sharepoint.com/_layouts/15/download.aspx?UniqueId=x&tempauth=v1.e30",
     "parentReference": {"id": "01DOCS"}},
    {"@odata.type": "#microsoft.graph.driveItem", "id": "01NOTE", "name": "Notebook", "package": {"type": "oneNote"},
     "parentReference": {"id": "01ROOT"}},
    {"@odata.type": "#microsoft.graph.driveItem", "id": "01BAD", "name": "invoice.exe", "size": 24,
     "file": {"mimeType": "application/octet-stream"}, "malware": {"description": "Trojan"}, "parentReference": {"id": "01DOCS"}},
    {"@odata.type": "#microsoft.graph.driveItem", "id": "01GONE", "deleted": {"state": "deleted"},
     "lastModifiedDateTime": "2026-11-22T10:00:00Z", "parentReference": {"id": "01DOCS"}}
  ]
}`

// FuzzDeltaPage feeds arbitrary bytes as a delta page through Client.Delta,
// the production path (msgraph-sdk-go's request adapter and JSON parse
// nodes, then our conversion): it must not panic, and a page it returns
// must hold what the crawl relies on.
func FuzzDeltaPage(f *testing.F) {
	for _, seed := range []string{
		fuzzPage,
		`{"@odata.deltaLink": "https://graph.microsoft.com/v1.0/drives/b!x/root/delta?token=abc", "value": []}`,
		`{"@odata.deltaLink": "d", "value": [null]}`,
		`{"@odata.nextLink": "n", "value": [{"id": "a", "name": "../../etc", "file": {}}]}`,
		`{"@odata.nextLink": "n", "value": [{"id": "a", "name": "x", "size": -1, "file": {}}]}`,
		`{"@odata.nextLink": 5, "value": {}}`,
		`{"value": [{"id": "a", "name": "x"}]}`,
		`null`, `[]`, `""`, ``,
	} {
		f.Add([]byte(seed))
	}
	const link = "https://graph.invalid/v1.0/drives/b!x/root/delta?$top=500"
	f.Fuzz(func(t *testing.T, body []byte) {
		c, err := graph.New(&http.Client{Transport: &pageTransport{body: body}}, "https://graph.invalid")
		if err != nil {
			t.Fatal(err)
		}
		page, err := c.Delta(context.Background(), link)
		if err != nil {
			if page.Items != nil || page.NextLink != "" || page.DeltaLink != "" {
				t.Fatalf("error %v with a page %+v", err, page)
			}
			return
		}
		if page.NextLink == "" && page.DeltaLink == "" {
			t.Fatal("a page that leads nowhere")
		}
		for i, it := range page.Items {
			if it.ID == "" || it.Size < 0 {
				t.Fatalf("item %d: %+v", i, it)
			}
			if !it.Deleted && !it.Root && (it.Name == "" || it.Name == "." || it.Name == ".." || strings.Contains(it.Name, "/")) {
				t.Fatalf("item %d has name %q: its path would not be its parent's plus one element", i, it.Name)
			}
			if it.Created.Location().String() != "UTC" || it.Modified.Location().String() != "UTC" {
				t.Fatalf("item %d times not in UTC: %v %v", i, it.Created, it.Modified)
			}
		}
	})
}

// TestDeltaPageRefusals pins what the fuzz properties stand on: pages the
// crawl could not use are errors, not items.
func TestDeltaPageRefusals(t *testing.T) {
	tests := []struct {
		name, body, wantErr string
	}{
		{"empty body", ``, "empty response"},
		{"null", `null`, "unreadable response"},
		{"no links", `{"value": []}`, "without nextLink or deltaLink"},
		{"null entry", `{"@odata.deltaLink": "d", "value": [null]}`, "entry 0 is null"},
		{"no id", `{"@odata.deltaLink": "d", "value": [{"name": "x", "file": {}}]}`, "without id"},
		{"negative size", `{"@odata.deltaLink": "d", "value": [{"id": "a", "name": "x", "size": -1}]}`, "size -1"},
		{"name climbs", `{"@odata.deltaLink": "d", "value": [{"id": "a", "name": "..", "folder": {}}]}`, "not a file or folder name"},
		{"name with slash", `{"@odata.deltaLink": "d", "value": [{"id": "a", "name": "a/b", "file": {}}]}`, "not a file or folder name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := graph.New(&http.Client{Transport: &pageTransport{body: []byte(tt.body)}}, "https://graph.invalid")
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Delta(t.Context(), "https://graph.invalid/v1.0/drives/d/root/delta")
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Delta = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	c, _ := graph.New(&http.Client{Transport: &pageTransport{body: []byte(fuzzPage)}}, "https://graph.invalid")
	page, err := c.Delta(t.Context(), "https://graph.invalid/v1.0/drives/d/root/delta")
	if err != nil || len(page.Items) != 6 || !page.Items[0].Root || !page.Items[5].Deleted ||
		page.Items[2].QuickXorHash == "" || !page.Items[3].Package || !page.Items[4].Malware {
		t.Fatalf("realistic page: %+v, %v", page, err)
	}
}
