package agent

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backup-proxy/backup-proxy/agent/jobs"
	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
	"github.com/backup-proxy/backup-proxy/repo"
)

// readChunkBytes is the data per ReadItem message (the API promises ≤ 1 MiB).
const readChunkBytes = 1 << 20

// CatalogService implements CatalogService over the repository.
type CatalogService struct {
	pb.UnimplementedCatalogServiceServer
	repo *repo.Repository
	// sourceKey maps a job source to the repository's source key.
	sourceKey func(jobs.Source) string
}

// NewCatalogService returns the CatalogService implementation. sourceKey
// must be the one the backup engine writes restore points with.
func NewCatalogService(r *repo.Repository, sourceKey func(jobs.Source) string) *CatalogService {
	return &CatalogService{repo: r, sourceKey: sourceKey}
}

// ListRestorePoints implements CatalogService.ListRestorePoints.
func (s *CatalogService) ListRestorePoints(ctx context.Context, req *pb.ListRestorePointsRequest) (*pb.ListRestorePointsResponse, error) {
	if req.TenantId == "" {
		return nil, toStatus(&jobs.InvalidSpecError{Field: "tenant_id", Reason: "required"})
	}
	source := ""
	switch src := req.Source.(type) {
	case *pb.ListRestorePointsRequest_Onedrive:
		source = s.sourceKey(jobs.Source{Kind: jobs.OneDrive, Ref: strings.TrimSpace(src.Onedrive.GetUser())})
	case *pb.ListRestorePointsRequest_SharepointSite:
		source = s.sourceKey(jobs.Source{Kind: jobs.SharePointSite, Ref: strings.TrimSpace(src.SharepointSite.GetSite())})
	}
	rps, err := s.repo.ListRestorePoints(ctx, strings.ToLower(req.TenantId), source)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListRestorePointsResponse{}
	for i := len(rps) - 1; i >= 0; i-- { // the repository lists oldest first
		resp.RestorePoints = append(resp.RestorePoints, restorePointPB(rps[i]))
	}
	return resp, nil
}

func restorePointPB(rp repo.RestorePoint) *pb.RestorePoint {
	out := &pb.RestorePoint{
		RestorePointId:     string(rp.ID),
		TenantId:           rp.Tenant,
		CreateTime:         timestamppb.New(rp.Time),
		Items:              rp.Items,
		Bytes:              rp.Bytes,
		BaseRestorePointId: string(rp.Base),
		JobId:              rp.Label,
	}
	kind, ref, _ := strings.Cut(rp.Source, ":")
	switch jobs.SourceKind(kind) {
	case jobs.OneDrive:
		out.Source = &pb.RestorePoint_Onedrive{Onedrive: &pb.OneDriveSource{User: ref}}
	case jobs.SharePointSite:
		out.Source = &pb.RestorePoint_SharepointSite{SharepointSite: &pb.SharePointSiteSource{Site: ref}}
	}
	return out
}

// ListItems implements CatalogService.ListItems.
func (s *CatalogService) ListItems(ctx context.Context, req *pb.ListItemsRequest) (*pb.ListItemsResponse, error) {
	if req.PageSize < 0 || req.PageSize > 1000 {
		return nil, toStatus(&jobs.InvalidSpecError{Field: "page_size", Reason: "must be between 0 and 1000"})
	}
	items, next, err := s.repo.ListItems(ctx, repo.ListItemsRequest{
		RestorePoint: repo.RestorePointID(req.RestorePointId),
		PathPrefix:   req.PathPrefix,
		PageSize:     int(req.PageSize),
		PageToken:    req.PageToken,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListItemsResponse{NextPageToken: next}
	for _, it := range items {
		resp.Items = append(resp.Items, itemPB(it))
	}
	return resp, nil
}

func itemPB(it repo.Item) *pb.Item {
	out := &pb.Item{
		Path:         it.Path,
		ItemId:       it.ItemID,
		DriveId:      it.DriveID,
		Name:         it.Name,
		Size:         it.Size,
		QuickXorHash: it.QuickXorHash,
		Folder:       it.Folder,
	}
	if !it.ModTime.IsZero() {
		out.ModifiedTime = timestamppb.New(it.ModTime)
	}
	if !it.Folder {
		out.Sha256 = hex.EncodeToString(it.SHA256[:])
	}
	return out
}

// ReadItem implements CatalogService.ReadItem.
func (s *CatalogService) ReadItem(req *pb.ReadItemRequest, stream pb.CatalogService_ReadItemServer) error {
	ctx := stream.Context()
	rd, err := s.repo.OpenItem(ctx, repo.RestorePointID(req.RestorePointId), req.ItemId)
	if err != nil {
		return toStatus(err)
	}
	defer rd.Close()
	buf := make([]byte, readChunkBytes)
	for {
		n, err := io.ReadFull(rd, buf)
		if n > 0 {
			if serr := stream.Send(&pb.ReadItemResponse{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return nil
		default:
			return toStatus(fmt.Errorf("read item %s: %w", req.ItemId, err))
		}
	}
}

// VerifyRepository implements CatalogService.VerifyRepository.
func (s *CatalogService) VerifyRepository(ctx context.Context, req *pb.VerifyRepositoryRequest) (*pb.VerifyRepositoryResponse, error) {
	report, err := s.repo.Verify(ctx, repo.VerifyOptions{ReadData: req.ReadData})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.VerifyRepositoryResponse{ChunksChecked: report.ChunksChecked}
	for _, p := range report.Problems {
		resp.Errors = append(resp.Errors, &pb.VerifyError{Message: p.String()})
	}
	for _, d := range report.DamagedItems {
		resp.Errors = append(resp.Errors, &pb.VerifyError{
			Message:        fmt.Sprintf("item damaged (%s)", d.Reason),
			RestorePointId: string(d.RestorePoint),
			Path:           d.Path,
		})
	}
	return resp, nil
}
