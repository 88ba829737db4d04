package graph

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Download streams an item's content from offset on. The request goes to
// /content; the scheduler follows Graph's redirect to the pre-authenticated
// download URL and moves the Range header there (Range is never sent to
// /content). The caller reads and closes the body; nothing is buffered.
func (c *Client) Download(ctx context.Context, driveID, itemID string, offset int64) (io.ReadCloser, error) {
	u := fmt.Sprintf("%s/drives/%s/items/%s/content", c.base, url.PathEscape(driveID), url.PathEscape(itemID))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", itemID, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK && offset == 0:
		return resp.Body, nil
	case resp.StatusCode == http.StatusPartialContent:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != offset {
			resp.Body.Close()
			return nil, fmt.Errorf("download %s: asked for bytes from %d, got Content-Range %q", itemID, offset, resp.Header.Get("Content-Range"))
		}
		return resp.Body, nil
	}
	// Errors: read a little of the body for the message, then close.
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return nil, fmt.Errorf("download %s: range from %d ignored by the server", itemID, offset)
	case http.StatusNotFound, http.StatusGone:
		return nil, fmt.Errorf("download %s: %w", itemID, ErrNotFound)
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, fmt.Errorf("download %s: %d: %w", itemID, resp.StatusCode, ErrDownloadURLExpired)
	}
	return nil, fmt.Errorf("download %s: %s: %s", itemID, resp.Status, strings.TrimSpace(string(msg)))
}

// contentRangeStart parses "bytes START-END/SIZE".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil
}
