package graphsim

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Delta follows OneDrive for Business semantics: every change gets a
// per-drive sequence number and a change-log entry; a token is a position in
// that log. A page returns the latest state of the items changed after the
// position, so an item that changes again while a crawl is paging shows up
// again later (clients must let the last occurrence win). Deleted items come
// without name and cTag. A full enumeration (no token) skips items that
// were already deleted when it began.

type deltaToken struct {
	drive  int
	full   bool   // part of a full enumeration
	start  uint64 // drive sequence when the full enumeration began
	cursor uint64 // last sequence delivered
	epoch  uint64 // tenant delta epoch; bumping it kills every token
	issued int64  // clock time (unix seconds) the token was issued
}

func (t deltaToken) encode() string {
	full := 0
	if t.full {
		full = 1
	}
	raw := fmt.Sprintf("v1.%d.%d.%d.%d.%d.%d", t.drive, full, t.start, t.cursor, t.epoch, t.issued)
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func parseDeltaToken(s string) (deltaToken, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return deltaToken{}, false
	}
	f := strings.Split(string(b), ".")
	if len(f) != 7 || f[0] != "v1" {
		return deltaToken{}, false
	}
	var n [6]uint64
	for i := range n {
		v, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return deltaToken{}, false
		}
		n[i] = v
	}
	return deltaToken{drive: int(n[0]), full: n[1] == 1, start: n[2], cursor: n[3], epoch: n[4], issued: int64(n[5])}, true
}

type deltaPage struct {
	ODataContext   string          `json:"@odata.context"`
	ODataNextLink  string          `json:"@odata.nextLink,omitempty"`
	ODataDeltaLink string          `json:"@odata.deltaLink,omitempty"`
	Value          []driveItemJSON `json:"value"`
}

func (s *Server) deltaLink(d *drive, tok deltaToken, top string) string {
	u := s.baseURL + "/v1.0/drives/" + d.id + "/root/delta?token=" + tok.encode()
	if top != "" {
		u += "&$top=" + url.QueryEscape(top)
	}
	return u
}

func (s *Server) serveDelta(c *call, d *drive, ref itemRef, token string) {
	if !ref.root && ref.id != d.rootID {
		c.fail(400, "invalidRequest", "Delta is only supported on the root folder of a drive in OneDrive for Business and SharePoint.")
		return
	}
	top := 200
	topParam := c.q.Get("$top")
	if v, err := strconv.Atoi(topParam); err == nil && v > 0 {
		top = min(v, 1000)
	}
	now := s.clock.Now()
	t := s.tenant

	t.mu.RLock()
	epoch := t.deltaEpoch
	var tok deltaToken
	switch token {
	case "":
		tok = deltaToken{drive: d.index, full: true, start: d.seq, epoch: epoch, issued: now.Unix()}
	case "latest":
		latest := deltaToken{drive: d.index, cursor: d.seq, epoch: epoch, issued: now.Unix()}
		t.mu.RUnlock()
		c.ok(200, deltaPage{ODataContext: s.metadata("Collection(driveItem)"),
			ODataDeltaLink: s.deltaLink(d, latest, topParam), Value: []driveItemJSON{}})
		return
	default:
		var ok bool
		tok, ok = parseDeltaToken(token)
		if !ok || tok.drive != d.index || tok.cursor > d.seq {
			t.mu.RUnlock()
			c.fail(400, "invalidRequest", "Invalid token.")
			return
		}
		dead := tok.epoch != epoch ||
			s.opts.DeltaTokenMaxAge > 0 && now.Sub(time.Unix(tok.issued, 0)) > s.opts.DeltaTokenMaxAge ||
			s.opts.Faults.DeadDeltaTokenRate > 0 && s.randFloat() < s.opts.Faults.DeadDeltaTokenRate
		if dead {
			restart := deltaToken{drive: d.index, full: true, start: d.seq, epoch: epoch, issued: now.Unix()}
			t.mu.RUnlock()
			c.w.Header().Set("Location", s.deltaLink(d, restart, topParam))
			c.fail(410, "resyncChangesApplyDifferences", "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about.")
			return
		}
	}

	// Walk the change log after the cursor.
	log := d.log
	i := sort.Search(len(log), func(i int) bool { return log[i].seq > tok.cursor })
	var views []itemView
	last := tok.cursor
	for ; i < len(log) && len(views) < top; i++ {
		e := log[i]
		it := d.items[e.id]
		if it.seq != e.seq {
			continue // superseded by a later change
		}
		last = e.seq
		if tok.full && it.deleted && it.seq <= tok.start {
			continue
		}
		views = append(views, s.viewOf(d, it))
	}
	page := deltaPage{ODataContext: s.metadata("Collection(driveItem)")}
	if i >= len(log) {
		page.ODataDeltaLink = s.deltaLink(d, deltaToken{drive: d.index, cursor: d.seq, epoch: epoch, issued: now.Unix()}, topParam)
	} else {
		next := tok
		next.cursor = last
		page.ODataNextLink = s.deltaLink(d, next, topParam)
	}
	t.mu.RUnlock()

	page.Value = make([]driveItemJSON, 0, len(views))
	for _, v := range views {
		page.Value = append(page.Value, s.render(v, renderDelta, c.tok.clientID))
	}
	c.ok(200, page)
}
