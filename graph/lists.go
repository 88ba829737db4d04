package graph

import (
	"context"
	"fmt"
	"time"

	absser "github.com/microsoft/kiota-abstractions-go/serialization"
	"github.com/microsoftgraph/msgraph-sdk-go/models"
	"github.com/microsoftgraph/msgraph-sdk-go/sites"
)

// List is a SharePoint list (not a document library: those are drives).
type List struct {
	ID          string
	Name        string
	DisplayName string
	Template    string
}

// ListItem is a list item with its fields as Graph's JSON.
type ListItem struct {
	ID       string
	ETag     string
	Modified time.Time
	// JSON is the item as Graph returns it with expand=fields.
	JSON []byte
}

// Lists returns a site's lists, without its document libraries.
func (c *Client) Lists(ctx context.Context, siteID string) ([]List, error) {
	var out []List
	b := c.sdk.Sites().BySiteId(siteID).Lists()
	get := func(b *sites.ItemListsRequestBuilder) (models.ListCollectionResponseable, error) {
		return sdkCall("lists of site", func() (models.ListCollectionResponseable, error) { return b.Get(ctx, nil) })
	}
	page, err := get(b)
	for {
		if err != nil {
			return nil, fmt.Errorf("lists of site %s: %w", siteID, mapError(err))
		}
		for _, l := range page.GetValue() {
			if l == nil {
				return nil, fmt.Errorf("lists of site %s: %w", siteID, errNullEntry)
			}
			template := ""
			if info := l.GetList(); info != nil {
				template = deref(info.GetTemplate())
			}
			if template == "documentLibrary" {
				continue
			}
			out = append(out, List{ID: deref(l.GetId()), Name: deref(l.GetName()), DisplayName: deref(l.GetDisplayName()), Template: template})
		}
		next := deref(page.GetOdataNextLink())
		if next == "" {
			return out, nil
		}
		page, err = get(b.WithUrl(next))
	}
}

// ListItems calls fn for every item of a list, page by page.
func (c *Client) ListItems(ctx context.Context, siteID, listID string, fn func(ListItem) error) error {
	b := c.sdk.Sites().BySiteId(siteID).Lists().ByListId(listID).Items()
	get := func(b *sites.ItemListsItemItemsRequestBuilder, cfg *sites.ItemListsItemItemsRequestBuilderGetRequestConfiguration) (models.ListItemCollectionResponseable, error) {
		return sdkCall("list items", func() (models.ListItemCollectionResponseable, error) { return b.Get(ctx, cfg) })
	}
	page, err := get(b, &sites.ItemListsItemItemsRequestBuilderGetRequestConfiguration{
		QueryParameters: &sites.ItemListsItemItemsRequestBuilderGetQueryParameters{Expand: []string{"fields"}},
	})
	for {
		if err != nil {
			return fmt.Errorf("items of list %s: %w", listID, mapError(err))
		}
		for _, it := range page.GetValue() {
			if it == nil {
				return fmt.Errorf("items of list %s: %w", listID, errNullEntry)
			}
			data, err := absser.SerializeToJson(it)
			if err != nil {
				return fmt.Errorf("items of list %s: encode %s: %w", listID, deref(it.GetId()), err)
			}
			if err := fn(ListItem{ID: deref(it.GetId()), ETag: deref(it.GetETag()), Modified: derefTime(it.GetLastModifiedDateTime()), JSON: data}); err != nil {
				return err
			}
		}
		next := deref(page.GetOdataNextLink())
		if next == "" {
			return nil
		}
		page, err = get(b.WithUrl(next), nil)
	}
}
