package graphsim

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Pre-authenticated download URLs look like SharePoint's
// /_layouts/15/download.aspx?UniqueId=...&tempauth=...: no Authorization
// header is needed, they expire, and they honour Range. They are metered
// (1 RU) against the app that obtained them.

const downloadPath = "/_layouts/15/download.aspx"

type tempAuth struct {
	drive    int
	itemID   string
	clientID string
	expires  time.Time
}

func (s *Server) signTempAuth(payload string) string {
	m := hmac.New(sha256.New, s.urlKey)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:16])
}

// downloadURL issues a pre-authenticated URL for the current content of an
// item, valid for DownloadURLLifetime on the server clock.
func (s *Server) downloadURL(d *drive, it *item, clientID string) string {
	exp := s.clock.Now().Add(s.opts.DownloadURLLifetime)
	if f := s.opts.Faults.ExpiredDownloadURLRate; f > 0 && s.randFloat() < f {
		exp = s.clock.Now().Add(-time.Second)
	}
	payload := fmt.Sprintf("%d|%s|%s|%d", d.index, it.id, clientID, exp.UnixNano())
	ta := base64.RawURLEncoding.EncodeToString([]byte(payload)) + "." + s.signTempAuth(payload)
	s.issued.add(&s.issued.c.TempAuths, ta)
	return s.baseURL + downloadPath + "?UniqueId=" + strings.ToUpper(it.uniqueID) + "&tempauth=" + ta + "&ApiVersion=2.0"
}

func (s *Server) parseTempAuth(v string) (tempAuth, bool) {
	enc, sig, ok := strings.Cut(v, ".")
	if !ok {
		return tempAuth{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil || !hmac.Equal([]byte(sig), []byte(s.signTempAuth(string(raw)))) {
		return tempAuth{}, false
	}
	f := strings.Split(string(raw), "|")
	if len(f) != 4 {
		return tempAuth{}, false
	}
	drive, err1 := strconv.Atoi(f[0])
	exp, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil {
		return tempAuth{}, false
	}
	return tempAuth{drive: drive, itemID: f[1], clientID: f[2], expires: time.Unix(0, exp)}, true
}

func (s *Server) sharePointError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("x-ms-diagnostics", fmt.Sprintf("3000006;reason=%q;category=\"invalid_client\"", msg))
	writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "message": msg}})
}

func (s *Server) serveDownload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.sharePointError(w, 405, "notSupported", "Only GET and HEAD are supported.")
		return
	}
	if !s.delay(r) {
		return
	}
	ta, ok := s.parseTempAuth(r.URL.Query().Get("tempauth"))
	if !ok {
		s.sharePointError(w, 401, "unauthenticated", "Invalid signature in tempauth token.")
		return
	}
	if !s.clock.Now().Before(ta.expires) {
		s.sharePointError(w, 401, "unauthenticated", "The download URL has expired.")
		return
	}
	client := ta.clientID
	s.stats.request(client, 1)
	v := s.throttle.charge(client, 1)
	if v.violation {
		s.stats.violation(client)
	}
	if v.rateLimit {
		w.Header().Set("RateLimit-Limit", strconv.FormatInt(v.limit, 10))
		w.Header().Set("RateLimit-Remaining", strconv.FormatInt(v.remaining, 10))
		w.Header().Set("RateLimit-Reset", strconv.Itoa(s.realSeconds(v.reset)))
	}
	if v.status != 0 {
		s.stats.throttled(client, v.status)
		w.Header().Set("Retry-After", strconv.Itoa(s.realSeconds(v.retryAfter)))
		if v.status == 429 {
			s.sharePointError(w, 429, "TooManyRequests", "The request has been throttled")
		} else {
			s.sharePointError(w, 503, "serviceNotAvailable", "Server Too Busy")
		}
		return
	}

	t := s.tenant
	t.mu.RLock()
	var it *item
	var d *drive
	if ta.drive >= 0 && ta.drive < len(t.drives) {
		d = t.drives[ta.drive]
		it = d.items[ta.itemID]
	}
	t.mu.RUnlock()
	if it == nil || it.deleted || it.folder {
		s.sharePointError(w, 404, "itemNotFound", "The file could not be found.")
		return
	}

	size := it.size
	start, end := int64(0), size // [start, end)
	status := http.StatusOK
	h := w.Header()
	if rh := r.Header.Get("Range"); rh != "" {
		a, b, ok := parseRange(rh, size)
		if !ok {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			s.sharePointError(w, http.StatusRequestedRangeNotSatisfiable, "invalidRange", "The requested range is not satisfiable.")
			return
		}
		start, end, status = a, b, http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
	}
	h.Set("Content-Type", it.mime)
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", fmt.Sprintf(`"{%s},%d"`, strings.ToUpper(it.uniqueID), it.eVersion))
	h.Set("Last-Modified", it.modified.UTC().Format(http.TimeFormat))
	h.Set("Content-Disposition", "attachment; filename*=UTF-8''"+url.PathEscape(it.name))
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	cw := &countingWriter{ResponseWriter: w}
	defer func() { s.stats.addBytes(client, cw.n) }()
	if f := s.opts.Faults.ConnectionResetRate; f > 0 && end-start > 1 && s.randFloat() < f {
		// Drop the connection half-way through the body.
		_, _ = it.content().reader(start, start+(end-start)/2).WriteTo(cw)
		cw.Flush()
		panic(http.ErrAbortHandler)
	}
	_, _ = it.content().reader(start, end).WriteTo(cw)
}

// parseRange parses a single "bytes=" range into [start, end).
func parseRange(h string, size int64) (int64, int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false
	}
	if a == "" { // suffix range: last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 || size == 0 {
			return 0, 0, false
		}
		return max(size-n, 0), size, true
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 || start >= size {
		return 0, 0, false
	}
	end := size
	if b != "" {
		last, err := strconv.ParseInt(b, 10, 64)
		if err != nil || last < start {
			return 0, 0, false
		}
		end = min(last+1, size)
	}
	return start, end, true
}
