package agent

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/backup-proxy/backup-proxy/agent/auth"
	"github.com/backup-proxy/backup-proxy/agent/jobs"
	"github.com/backup-proxy/backup-proxy/pool"
	"github.com/backup-proxy/backup-proxy/repo"
)

// fieldViolation is a domain error refusing one request field.
type fieldViolation interface {
	error
	FieldViolation() (field, reason string)
}

// toStatus maps a domain error to a gRPC status. It is the one place where
// domain errors meet status codes; handlers return toStatus(err).
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var (
		invalid      fieldViolation
		precondition *pool.PreconditionError
		queueFull    *jobs.QueueFullError
		denied       *auth.DeniedError
		rateLimited  *auth.RateLimitedError
	)
	switch {
	case errors.As(err, &invalid):
		field, reason := invalid.FieldViolation()
		return withDetails(codes.InvalidArgument, err.Error(), &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}},
		})
	case errors.As(err, &precondition):
		return withDetails(codes.FailedPrecondition, err.Error(), &errdetails.PreconditionFailure{
			Violations: []*errdetails.PreconditionFailure_Violation{{Type: "POOL", Description: precondition.Reason}},
		})
	case errors.As(err, &queueFull):
		return withDetails(codes.ResourceExhausted, err.Error(), &errdetails.RetryInfo{
			RetryDelay: durationpb.New(queueFull.RetryAfter),
		})
	case errors.Is(err, auth.ErrUnauthenticated):
		return status.Error(codes.Unauthenticated, err.Error())
	case errors.As(err, &denied):
		return status.Error(codes.PermissionDenied, err.Error())
	case errors.As(err, &rateLimited):
		return withDetails(codes.ResourceExhausted, err.Error(), &errdetails.RetryInfo{
			RetryDelay: durationpb.New(rateLimited.RetryAfter),
		})
	case errors.Is(err, pool.ErrNoUsableApp):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, pool.ErrNotFound), errors.Is(err, jobs.ErrNotFound), errors.Is(err, repo.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, repo.ErrInvalidArgument):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, repo.ErrCorrupt):
		return status.Error(codes.DataLoss, err.Error())
	case errors.Is(err, repo.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, repo.ErrBusy), errors.Is(err, repo.ErrInUse):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, pool.ErrAlreadyExists), errors.Is(err, jobs.ErrConflict):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, jobs.ErrBadPageToken):
		return withDetails(codes.InvalidArgument, err.Error(), &errdetails.BadRequest{
			FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "page_token", Description: "not a token from a previous page"}},
		})
	case errors.Is(err, jobs.ErrClosed):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

func withDetails(code codes.Code, msg string, details ...protoadapt.MessageV1) error {
	st, err := status.New(code, msg).WithDetails(details...)
	if err != nil {
		return status.Error(code, msg)
	}
	return st.Err()
}
