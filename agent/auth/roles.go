// Package auth decides who is calling the agent and what they may do: the
// caller's identity from a verified client certificate or a bearer token, the
// role every RPC needs, and a per-caller rate limit. It knows nothing of
// gRPC's status codes: the agent maps its errors at the edge.
package auth

import (
	"fmt"
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionalphapb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"

	pb "github.com/backup-proxy/backup-proxy/proto/backupproxy/v1"
)

// Role is a set of permissions. Write does not imply Read: a caller that
// needs both is given both.
type Role uint8

const (
	// Read allows the operations that change nothing: Get, List, Watch,
	// Read, Verify, GetAgentInfo, reflection.
	Read Role = 1 << iota
	// Write allows the operations that change state: SubmitJob, CancelJob
	// and changes to the application pool.
	Write

	// None is no role; methods needing None are open to every caller that
	// passed the transport (health checks of load balancers).
	None Role = 0
)

// Subject Organization values of client certificates that grant the roles,
// after Kubernetes' convention of O as group.
const (
	OrgRead  = "backup-proxy:read"
	OrgWrite = "backup-proxy:write"
)

// Has reports whether r includes every role of need.
func (r Role) Has(need Role) bool { return r&need == need }

func (r Role) String() string {
	var names []string
	if r.Has(Read) {
		names = append(names, "read")
	}
	if r.Has(Write) {
		names = append(names, "write")
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// ParseRoles parses a comma-separated list of read and write.
func ParseRoles(s string) (Role, error) {
	var r Role
	for name := range strings.SplitSeq(s, ",") {
		switch strings.TrimSpace(name) {
		case "read":
			r |= Read
		case "write":
			r |= Write
		default:
			return None, fmt.Errorf("role %q is not read or write", name)
		}
	}
	return r, nil
}

// methodRoles is the role every RPC the agent serves needs. A method missing
// here is refused; TestEveryMethodHasARole fails when an RPC is added to a
// service without an entry.
var methodRoles = map[string]Role{
	pb.AgentService_GetAgentInfo_FullMethodName: Read,

	pb.PoolService_AddApplication_FullMethodName:    Write,
	pb.PoolService_CreateApplication_FullMethodName: Write,
	pb.PoolService_ListApplications_FullMethodName:  Read,
	pb.PoolService_UpdateCertificate_FullMethodName: Write,
	pb.PoolService_RemoveApplication_FullMethodName: Write,

	pb.JobService_SubmitJob_FullMethodName: Write,
	pb.JobService_GetJob_FullMethodName:    Read,
	pb.JobService_ListJobs_FullMethodName:  Read,
	pb.JobService_WatchJob_FullMethodName:  Read,
	pb.JobService_CancelJob_FullMethodName: Write,

	pb.CatalogService_ListRestorePoints_FullMethodName: Read,
	pb.CatalogService_ListItems_FullMethodName:         Read,
	pb.CatalogService_ReadItem_FullMethodName:          Read,
	// Verify changes nothing; with read_data it is slow, which the rate
	// limit and the caller's deadline bound, not the role.
	pb.CatalogService_VerifyRepository_FullMethodName: Read,

	// Load balancers probe health without credentials of their own.
	healthpb.Health_Check_FullMethodName: None,
	healthpb.Health_List_FullMethodName:  None,
	healthpb.Health_Watch_FullMethodName: None,

	// Reflection describes the API; it is what grpcurl lists with.
	reflectionpb.ServerReflection_ServerReflectionInfo_FullMethodName:      Read,
	reflectionalphapb.ServerReflection_ServerReflectionInfo_FullMethodName: Read,
}

// Required returns the role method needs; ok is false for a method the
// table does not know, which is refused.
func Required(method string) (need Role, ok bool) {
	need, ok = methodRoles[method]
	return need, ok
}
