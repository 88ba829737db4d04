package scheduler

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// Class is the queue a request waits in. Metadata is served before
// downloads so that delta pages, which produce the downloads, keep flowing.
type Class uint8

// Request classes.
const (
	ClassMetadata Class = iota // Graph API calls other than file content
	ClassDownload              // /content and pre-authenticated download URLs
	numClasses
)

func (c Class) String() string {
	if c == ClassDownload {
		return "download"
	}
	return "metadata"
}

// maxBatchRequests is Graph's limit of sub-requests in one $batch.
const maxBatchRequests = 20

// collections are path segments that name a multi-item query (2 RU).
var collections = map[string]bool{
	"children": true, "drives": true, "sites": true, "lists": true, "items": true,
	"getallsites": true, "versions": true, "columns": true, "contenttypes": true,
	"followedsites": true, "subsites": true,
}

// sharePoint are path segments that make a Graph call SharePoint/OneDrive
// traffic. Calls without any (users, applications, servicePrincipals...) are
// directory calls, which SharePoint does not meter (graphsim charges 0 too).
var sharePoint = map[string]bool{
	"sites": true, "drives": true, "drive": true, "shares": true, "lists": true,
	"items": true, "root": true, "children": true, "content": true, "permissions": true,
	"getallsites": true, "followedsites": true,
}

// Cost returns the class and the resource units (RU) SharePoint charges for
// a Graph request, given the path after the version prefix (e.g.
// "/drives/x/root/delta") and the raw query. A file download through
// /content costs 1 RU for the /content call plus 1 RU for the download URL
// it redirects to; Cost returns the 1 RU of the call itself.
func Cost(method, path, rawQuery string) (Class, int) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, s := range segs {
		// "root:" / "delta(token='x')" address forms: keep the name only.
		if j := strings.IndexAny(s, ":("); j >= 0 {
			s = s[:j]
		}
		segs[i] = strings.ToLower(s)
	}
	if len(segs) == 0 || segs[0] == "" {
		return ClassMetadata, 1
	}
	last := segs[len(segs)-1]
	sp := false
	for _, s := range segs {
		if s == "permissions" {
			return ClassMetadata, 5
		}
		sp = sp || sharePoint[s]
	}
	var q url.Values
	if rawQuery != "" {
		q, _ = url.ParseQuery(rawQuery)
		for _, k := range []string{"$expand", "expand"} {
			if strings.Contains(strings.ToLower(q.Get(k)), "permissions") {
				return ClassMetadata, 5
			}
		}
	}
	if !sp {
		return ClassMetadata, 0
	}
	if method != http.MethodGet && method != http.MethodHead {
		return ClassMetadata, 2
	}
	switch {
	case last == "content" || last == "$value":
		return ClassDownload, 1
	case last == "delta":
		if hasDeltaToken(path, q) {
			return ClassMetadata, 1
		}
		return ClassMetadata, 2
	case collections[last]:
		return ClassMetadata, 2
	}
	return ClassMetadata, 1
}

func hasDeltaToken(path string, q url.Values) bool {
	for _, k := range []string{"token", "$deltatoken", "$skiptoken", "deltatoken"} {
		if q.Get(k) != "" {
			return true
		}
	}
	// delta(token='...') function-call form.
	return strings.Contains(strings.ToLower(path), "delta(token=")
}

// batchBody is the part of a JSON $batch request the cost depends on.
type batchBody struct {
	Requests []struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"requests"`
}

// batchCost sums the cost of a $batch's sub-requests: SharePoint meters each
// on its own. An unreadable body is charged as a full batch of 1-RU calls
// so that it is not under-counted.
func batchCost(body []byte) int {
	var b batchBody
	if err := json.Unmarshal(body, &b); err != nil || len(b.Requests) == 0 {
		return maxBatchRequests
	}
	total := 0
	for _, r := range b.Requests {
		path, rawQuery, _ := strings.Cut(r.URL, "?")
		// Sub-request URLs are relative to the version ("/drives/x" or
		// "drives/x"); tolerate an absolute one.
		if u, err := url.Parse(r.URL); err == nil && u.IsAbs() {
			path, rawQuery = u.Path, u.RawQuery
			for _, p := range []string{"/v1.0/", "/beta/"} {
				path = strings.TrimPrefix(path, strings.TrimSuffix(p, "/"))
			}
		}
		_, c := Cost(strings.ToUpper(r.Method), path, rawQuery)
		total += c
	}
	return total
}
