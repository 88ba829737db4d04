package graph

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/microsoftgraph/msgraph-sdk-go/drives"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
)

// DeltaPageSize is the $top asked of delta pages (Corso used 500 too).
const DeltaPageSize = 500

// Item is a drive item as a delta page reports it.
type Item struct {
	ID       string
	Name     string // empty for deleted items on OneDrive for Business
	ParentID string // empty for the root
	Size     int64
	ETag     string
	CTag     string // content tag: changes when the content changes
	Created  time.Time
	Modified time.Time
	Root     bool
	Folder   bool
	File     bool
	Package  bool // OneNote notebooks and the like: a folder-like item without content
	Deleted  bool
	Malware  bool // flagged by Microsoft; the content cannot be downloaded
	// QuickXorHash is Graph's content hash (base64); empty when Graph gives none.
	QuickXorHash string
	MimeType     string
}

// DeltaPage is one page of a drive's changes.
type DeltaPage struct {
	Items []Item
	// NextLink continues this enumeration; empty on its last page.
	NextLink string
	// DeltaLink, on the last page, starts the next incremental run.
	DeltaLink string
}

// DeltaStart returns the link that enumerates a whole drive from scratch.
func (c *Client) DeltaStart(driveID string) string {
	return fmt.Sprintf("%s/drives/%s/root/delta?$top=%d", c.base, url.PathEscape(driveID), DeltaPageSize)
}

// Delta fetches one page at link: a DeltaStart link, a page's NextLink, a
// stored DeltaLink, or a ResyncError's Location. A dead token gives a
// *ResyncError.
func (c *Client) Delta(ctx context.Context, link string) (DeltaPage, error) {
	resp, err := sdkCall("delta page", func() (drives.ItemItemsItemDeltaGetResponseable, error) {
		return drives.NewItemItemsItemDeltaRequestBuilder(link, c.adapter).GetAsDeltaGetResponse(ctx, nil)
	})
	if err != nil {
		return DeltaPage{}, mapError(err)
	}
	return pageOf(resp)
}

// pageOf converts a delta response (not nil: sdkCall saw to that), refusing
// what the crawl cannot use: a page that leads nowhere, a null entry, or an
// item that breaks checkItem.
func pageOf(resp drives.ItemItemsItemDeltaGetResponseable) (DeltaPage, error) {
	page := DeltaPage{NextLink: deref(resp.GetOdataNextLink()), DeltaLink: deref(resp.GetOdataDeltaLink())}
	if page.NextLink == "" && page.DeltaLink == "" {
		return DeltaPage{}, fmt.Errorf("graph: delta page without nextLink or deltaLink")
	}
	values := resp.GetValue()
	page.Items = make([]Item, 0, len(values))
	for i, v := range values {
		if v == nil { // "value": [null]
			return DeltaPage{}, fmt.Errorf("graph: delta page entry %d is null", i)
		}
		it := itemOf(v)
		if err := checkItem(it); err != nil {
			return DeltaPage{}, fmt.Errorf("graph: delta page entry %d: %w", i, err)
		}
		page.Items = append(page.Items, it)
	}
	return page, nil
}

// checkItem holds an item to what the crawl assumes of it: an id (items
// are keyed by it), a size that is not negative, and, for an item that is
// neither deleted nor the root, a name that is one path element (its path
// is the parent's joined with the name; "../x" would land elsewhere).
// Graph never sends otherwise; a page that does is refused whole rather
// than recorded wrong.
func checkItem(it Item) error {
	switch {
	case it.ID == "":
		return fmt.Errorf("an item without id")
	case it.Size < 0:
		return fmt.Errorf("item %s has size %d", it.ID, it.Size)
	case it.Deleted || it.Root:
		return nil
	case it.Name == "" || it.Name == "." || it.Name == ".." || strings.ContainsRune(it.Name, '/'):
		return fmt.Errorf("item %s has name %q, which is not a file or folder name", it.ID, it.Name)
	}
	return nil
}

func itemOf(v models.DriveItemable) Item {
	it := Item{
		ID:       deref(v.GetId()),
		Name:     deref(v.GetName()),
		Size:     deref(v.GetSize()),
		ETag:     deref(v.GetETag()),
		CTag:     deref(v.GetCTag()),
		Created:  derefTime(v.GetCreatedDateTime()),
		Modified: derefTime(v.GetLastModifiedDateTime()),
		Root:     v.GetRoot() != nil,
		Folder:   v.GetFolder() != nil,
		Package:  v.GetPackageEscaped() != nil,
		Deleted:  v.GetDeleted() != nil,
		Malware:  v.GetMalware() != nil,
	}
	if p := v.GetParentReference(); p != nil {
		it.ParentID = deref(p.GetId())
	}
	if f := v.GetFile(); f != nil {
		it.File = true
		it.MimeType = deref(f.GetMimeType())
		if h := f.GetHashes(); h != nil {
			it.QuickXorHash = deref(h.GetQuickXorHash())
		}
	}
	return it
}

// ItemPath returns the current path of an item from the drive root ("" for
// the root itself), as a GET of the item reports it. Delta pages carry no
// paths, so a crawl that meets a child before its parent asks for the
// parent's path this way.
func (c *Client) ItemPath(ctx context.Context, driveID, itemID string) (string, error) {
	it, err := sdkCall("item", func() (models.DriveItemable, error) {
		return c.sdk.Drives().ByDriveId(driveID).Items().ByDriveItemId(itemID).Get(ctx, nil)
	})
	if err != nil {
		return "", fmt.Errorf("item %s: %w", itemID, mapError(err))
	}
	if it.GetRoot() != nil {
		return "", nil
	}
	parent := ""
	if p := it.GetParentReference(); p != nil {
		// "/drives/{id}/root:/a/b" (or "/drive/root:/a/b"): the part after "root:".
		if _, after, ok := strings.Cut(deref(p.GetPath()), "root:"); ok {
			parent = strings.TrimSuffix(after, "/")
		}
	}
	return parent + "/" + deref(it.GetName()), nil
}
