package graphsim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// JSON batching: up to 20 sub-requests in one POST /v1.0/$batch. Each
// sub-request is metered and throttled on its own; the envelope is 200 and a
// throttled sub-request carries 429 with its own Retry-After header.

const maxBatch = 20

type batchRequest struct {
	ID        string            `json:"id"`
	Method    string            `json:"method"`
	URL       string            `json:"url"`
	Headers   map[string]string `json:"headers"`
	Body      json.RawMessage   `json:"body"`
	DependsOn []string          `json:"dependsOn"`
}

type batchResponse struct {
	ID      string            `json:"id"`
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    any               `json:"body,omitempty"`
}

// recorder captures a sub-request's response.
type recorder struct {
	h      http.Header
	status int
	buf    bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = 200
	}
	return r.buf.Write(p)
}

func (s *Server) handleBatch(w http.ResponseWriter, r *http.Request, tok *accessToken, reqID string) {
	if r.Method != http.MethodPost {
		s.graphError(w, r, reqID, 405, "invalidRequest", "$batch only accepts POST.")
		return
	}
	var env struct {
		Requests []batchRequest `json:"requests"`
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err == nil {
		err = json.Unmarshal(b, &env)
	}
	if err != nil || len(env.Requests) == 0 {
		s.graphError(w, r, reqID, 400, "BadRequest", "Invalid batch payload format.")
		return
	}
	if len(env.Requests) > maxBatch {
		s.graphError(w, r, reqID, 400, "BadRequest", "The number of batch requests exceeds the limit of 20.")
		return
	}
	seen := map[string]bool{}
	for _, br := range env.Requests {
		if br.ID == "" || seen[br.ID] || br.Method == "" || br.URL == "" {
			s.graphError(w, r, reqID, 400, "BadRequest", "Each batch request needs a unique id, a method and a url.")
			return
		}
		seen[br.ID] = true
	}

	status := map[string]int{}
	out := struct {
		Responses []batchResponse `json:"responses"`
	}{Responses: make([]batchResponse, 0, len(env.Requests))}
	for _, br := range env.Requests {
		failedDep := false
		for _, dep := range br.DependsOn {
			if st, ok := status[dep]; !ok || st >= 400 {
				failedDep = true
			}
		}
		var resp batchResponse
		if failedDep {
			resp = batchResponse{ID: br.ID, Status: http.StatusFailedDependency,
				Body: map[string]any{"error": map[string]string{"code": "BadRequest", "message": "Failed dependency."}}}
		} else {
			resp = s.runSubRequest(r, tok, br)
		}
		status[br.ID] = resp.Status
		out.Responses = append(out.Responses, resp)
	}
	w.Header().Set("Content-Type", odataJSON)
	writeJSON(w, 200, out)
}

func (s *Server) runSubRequest(outer *http.Request, tok *accessToken, br batchRequest) batchResponse {
	rel := br.URL
	if u, err := url.Parse(rel); err == nil && u.IsAbs() {
		rel = u.RequestURI()
	}
	rel = "/" + strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(rel, "/"), "v1.0"), "/")
	var body io.Reader = http.NoBody
	if len(br.Body) > 0 && string(br.Body) != "null" {
		body = bytes.NewReader(br.Body)
	}
	sub, err := http.NewRequestWithContext(outer.Context(), strings.ToUpper(br.Method), s.baseURL+"/v1.0"+rel, body)
	if err != nil {
		return batchResponse{ID: br.ID, Status: 400, Body: map[string]any{"error": map[string]string{"code": "BadRequest", "message": "Invalid request URL."}}}
	}
	for k, v := range br.Headers {
		sub.Header.Set(k, v)
	}
	rec := &recorder{h: http.Header{}}
	reqID := newRequestID()
	rest := strings.TrimPrefix(strings.TrimPrefix(sub.URL.EscapedPath(), "/v1.0"), "/")
	s.dispatch(&call{s: s, w: rec, r: sub, segs: splitSegments(rest), q: sub.URL.Query(), tok: tok, reqID: reqID, inBatch: true})

	resp := batchResponse{ID: br.ID, Status: rec.status, Headers: map[string]string{}}
	if resp.Status == 0 {
		resp.Status = 200
	}
	for k, v := range rec.h {
		if k == "Content-Length" {
			continue
		}
		resp.Headers[k] = strings.Join(v, ", ")
	}
	if rec.buf.Len() > 0 {
		if json.Valid(rec.buf.Bytes()) {
			resp.Body = json.RawMessage(rec.buf.Bytes())
		} else {
			resp.Body = rec.buf.String()
		}
	}
	return resp
}
