// Command goclient drives a daemon through containerd's own Go client (Debian's
// golang-github-containerd-containerd-dev, the 1.6 client) and prints a transcript: one line per
// step, its result or its error's kind and message. The tests run it against corrald and against
// containerd and compare the transcripts; nothing in it knows which daemon it talks to.
//
//	goclient SOCKET NAMESPACE IMAGE_ARCHIVE
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/cio"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/diff"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/images/archive"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/platforms"
	"github.com/containerd/containerd/snapshots"
	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const image = "docker.io/library/busybox:latest"

var ns string

// kind names an error as containerd's errdefs classify it.
func kind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errdefs.IsNotFound(err):
		return "NotFound"
	case errdefs.IsAlreadyExists(err):
		return "AlreadyExists"
	case errdefs.IsInvalidArgument(err):
		return "InvalidArgument"
	case errdefs.IsFailedPrecondition(err):
		return "FailedPrecondition"
	case errdefs.IsUnavailable(err):
		return "Unavailable"
	case errdefs.IsNotImplemented(err):
		return "NotImplemented"
	default:
		return "Unknown"
	}
}

func say(step string, format string, args ...interface{}) {
	line := fmt.Sprintf(format, args...)
	fmt.Printf("%s: %s\n", step, strings.ReplaceAll(line, ns, "NS"))
}

func check(step string, err error) bool {
	if err != nil {
		say(step, "%s: %v", kind(err), err)
		return false
	}
	say(step, "ok")
	return true
}

func labels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: goclient SOCKET NAMESPACE IMAGE_ARCHIVE")
		os.Exit(2)
	}
	ns = os.Args[2]
	client, err := containerd.New(os.Args[1], containerd.WithTimeout(10*time.Second))
	if err != nil {
		fmt.Println("connect:", err)
		os.Exit(1)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), ns)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()

	server(ctx, client)
	namespaceSteps(ctx, client)
	contentSteps(ctx, client)
	leaseSteps(ctx, client)
	snapshotSteps(ctx, client)
	introspectionSteps(ctx, client)
	topics := watch(ctx, client)
	img := imageSteps(ctx, client, os.Args[3])
	if img != nil {
		exportSteps(ctx, client, img)
		diffSteps(ctx, client, img)
		containerSteps(ctx, client, img)
	}
	cleanup(ctx, client)
	say("events seen", "%v", topics())
}

// watch subscribes to this namespace's events; the returned function stops and lists the topics
// seen (a set: the order of events from concurrent work is not the daemons' to agree on).
func watch(ctx context.Context, client *containerd.Client) func() []string {
	sub, stop := context.WithCancel(ctx)
	envelopes, errs := client.Subscribe(sub, `namespace=="`+ns+`"`)
	seen := map[string]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case e := <-envelopes:
				seen[e.Topic] = true
			case <-errs:
				return
			}
		}
	}()
	_, errBad := client.EventService().Subscribe(ctx, "topic==")
	select {
	case err := <-errBad:
		say("subscribe bad filter", "%s", kind(err))
	case <-time.After(5 * time.Second):
		say("subscribe bad filter", "no error")
	}
	time.Sleep(200 * time.Millisecond) // the subscription is in place before the work starts
	return func() []string {
		time.Sleep(500 * time.Millisecond)
		stop()
		<-done
		topics := []string{}
		for t := range seen {
			topics = append(topics, t)
		}
		sort.Strings(topics)
		return topics
	}
}

func introspectionSteps(ctx context.Context, client *containerd.Client) {
	is := client.IntrospectionService()
	resp, err := is.Plugins(ctx, []string{"type==io.containerd.snapshotter.v1,id==native", "id==walking"})
	if check("plugins", err) {
		for _, p := range resp.Plugins {
			say("plugin", "%s.%s caps=%v", p.Type, p.ID, p.Capabilities)
		}
	}
	_, err = is.Plugins(ctx, []string{"id=="})
	say("plugins bad filter", "%s", kind(err))
	resp, err = is.Plugins(ctx, []string{"type==io.containerd.nothing.v1"})
	say("plugins none", "%d %s", len(resp.Plugins), kind(err))
}

func exportSteps(ctx context.Context, client *containerd.Client, img containerd.Image) {
	var tarball bytes.Buffer
	err := client.Export(ctx, &tarball, archive.WithImage(client.ImageService(), img.Name()), archive.WithPlatform(platforms.Default()))
	say("export", "%v %s", tarball.Len() > 0, kind(err))
	err = client.Export(ctx, io.Discard, archive.WithImage(client.ImageService(), "example.com/nope:1"))
	say("export missing", "%s: %v", kind(err), err)
}

func diffSteps(ctx context.Context, client *containerd.Client, img containerd.Image) {
	ctx, done, err := client.WithLease(ctx)
	if !check("diff lease", err) {
		return
	}
	defer done(ctx)
	sn := client.SnapshotService("overlayfs")
	diffIDs, _ := img.RootFS(ctx)
	parent := identity.ChainID(diffIDs).String()
	lower, err := sn.View(ctx, "go-diff-lower", parent)
	say("diff lower", "%d %s", len(lower), kind(err))
	upper, err := sn.Prepare(ctx, "go-diff-upper", parent)
	say("diff upper", "%d %s", len(upper), kind(err))
	ds := client.DiffService()
	desc, err := ds.Compare(ctx, lower, upper)
	say("diff compare empty", "%s %s", desc.MediaType, kind(err))
	_, err = ds.Compare(ctx, lower, upper, diff.WithMediaType("application/x-nope"))
	say("diff compare bad media type", "%s: %v", kind(err), err)
	applied, err := ds.Apply(ctx, desc, upper)
	say("diff apply", "%s %s", applied.MediaType, kind(err))
	_, err = ds.Apply(ctx, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("nope"), Size: 4}, upper)
	say("diff apply missing", "%s", kind(err))
	check("diff remove upper", sn.Remove(ctx, "go-diff-upper"))
	check("diff remove lower", sn.Remove(ctx, "go-diff-lower"))
}

func server(ctx context.Context, client *containerd.Client) {
	serving, err := client.IsServing(ctx)
	say("serving", "%v %s", serving, kind(err))
	info, err := client.Server(ctx)
	say("server", "uuid=%v %s", info.UUID != "", kind(err))
	v, err := client.Version(ctx)
	say("version", "%v %s", v.Version != "", kind(err))
}

func namespaceSteps(ctx context.Context, client *containerd.Client) {
	store := client.NamespaceService()
	check("namespace create", store.Create(ctx, ns+"-x", map[string]string{"team": "a"}))
	check("namespace create again", store.Create(ctx, ns+"-x", nil))
	check("namespace create bad", store.Create(ctx, "bad name", nil))
	got, err := store.Labels(ctx, ns+"-x")
	say("namespace labels", "%s %s", labels(got), kind(err))
	check("namespace set label", store.SetLabel(ctx, ns+"-x", "team", ""))
	got, err = store.Labels(ctx, ns+"-x")
	say("namespace labels after", "%s %s", labels(got), kind(err))
	check("namespace delete", store.Delete(ctx, ns+"-x"))
	check("namespace delete again", store.Delete(ctx, ns+"-x"))
	_, err = store.Labels(ctx, ns+"-nope")
	say("namespace labels missing", "%s", kind(err))
}

func contentSteps(ctx context.Context, client *containerd.Client) {
	cs := client.ContentStore()
	data := []byte("hello from the go client")
	dgst := digest.FromBytes(data)
	desc := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: dgst, Size: int64(len(data))}
	check("content write", content.WriteBlob(ctx, cs, "go-ref", bytes.NewReader(data), desc, content.WithLabels(map[string]string{"containerd.io/gc.root": "go"})))
	err := content.WriteBlob(ctx, cs, "go-ref-2", bytes.NewReader(data), desc)
	say("content write again", "%s", kind(err))
	info, err := cs.Info(ctx, dgst)
	say("content info", "%s %d %s %s", info.Digest, info.Size, labels(info.Labels), kind(err))
	info.Labels["a"] = "b"
	info, err = cs.Update(ctx, info, "labels.a")
	say("content update", "%s %s", labels(info.Labels), kind(err))
	_, err = cs.Update(ctx, content.Info{Digest: dgst}, "size")
	say("content update size", "%s: %v", kind(err), err)
	ra, err := cs.ReaderAt(ctx, desc)
	if check("content reader", err) {
		buf := make([]byte, 5)
		n, err := ra.ReadAt(buf, 6)
		say("content read at", "%q %d %s", buf[:n], ra.Size(), kind(err))
		ra.Close()
	}
	var seen []string
	err = cs.Walk(ctx, func(i content.Info) error { seen = append(seen, i.Digest.String()); return nil }, "labels.a==b")
	say("content walk", "%v %s", seen, kind(err))
	err = cs.Walk(ctx, func(content.Info) error { return nil }, "labels.a==")
	say("content walk bad filter", "%s: %v", kind(err), err)
	_, err = cs.Info(ctx, digest.Digest("sha256:"+strings.Repeat("0", 64)))
	say("content info missing", "%s: %v", kind(err), err)
	_, err = cs.Info(ctx, digest.Digest("sha256:xyz"))
	say("content info malformed", "%s", kind(err))

	w, err := content.OpenWriter(ctx, cs, content.WithRef("go-partial"), content.WithDescriptor(ocispec.Descriptor{Size: 10}))
	if check("content open writer", err) {
		_, err = w.Write([]byte("12345"))
		say("content partial write", "%s", kind(err))
		st, err := w.Status()
		say("content status", "%s %d %d %s", st.Ref, st.Offset, st.Total, kind(err))
		w.Close()
	}
	statuses, err := cs.ListStatuses(ctx)
	refs := []string{}
	for _, s := range statuses {
		refs = append(refs, fmt.Sprintf("%s@%d/%d", s.Ref, s.Offset, s.Total))
	}
	say("content list statuses", "%v %s", refs, kind(err))
	st, err := cs.Status(ctx, "go-partial")
	say("content status by ref", "%d %s", st.Offset, kind(err))
	resumed, err := content.OpenWriter(ctx, cs, content.WithRef("go-partial"))
	if check("content writer resumed", err) {
		st, err := resumed.Status()
		say("content resumed status", "%d %s", st.Offset, kind(err))
		resumed.Close()
		// containerd removes an ingest from under a writer whose stream has not ended yet, and
		// may race the writer's last update of it: let the stream end first.
		time.Sleep(300 * time.Millisecond)
	}
	check("content abort", cs.Abort(ctx, "go-partial"))
	err = cs.Abort(ctx, "go-partial")
	say("content abort again", "%s: %v", kind(err), err)
	check("content delete", cs.Delete(ctx, dgst))
	err = cs.Delete(ctx, dgst)
	say("content delete again", "%s: %v", kind(err), err)
}

func leaseSteps(ctx context.Context, client *containerd.Client) {
	lm := client.LeasesService()
	l, err := lm.Create(ctx, leases.WithID("go-lease"), leases.WithLabels(map[string]string{"k": "v"}))
	say("lease create", "%s %s %s", l.ID, labels(l.Labels), kind(err))
	_, err = lm.Create(ctx, leases.WithID("go-lease"))
	say("lease create again", "%s: %v", kind(err), err)
	_, err = lm.Create(ctx, leases.WithID("bad/id"))
	say("lease create bad id", "%s", kind(err))
	res := leases.Resource{ID: "sha256:" + strings.Repeat("1", 64), Type: "content"}
	check("lease add resource", lm.AddResource(ctx, l, res))
	check("lease add resource again", lm.AddResource(ctx, l, res))
	err = lm.AddResource(ctx, l, leases.Resource{ID: "x", Type: "unknown-type"})
	say("lease add bad resource", "%s", kind(err))
	err = lm.AddResource(ctx, leases.Lease{ID: "nope"}, res)
	say("lease add to missing", "%s: %v", kind(err), err)
	rs, err := lm.ListResources(ctx, l)
	say("lease resources", "%v %s", rs, kind(err))
	check("lease delete resource", lm.DeleteResource(ctx, l, res))
	ls, err := lm.List(ctx, "id==go-lease")
	say("lease list", "%d %s", len(ls), kind(err))
	_, err = lm.List(ctx, "id==")
	say("lease list bad filter", "%s: %v", kind(err), err)
	exp, err := lm.Create(ctx, leases.WithID("go-expiring"), leases.WithExpiration(time.Hour))
	say("lease with expiry", "%v %s", exp.Labels["containerd.io/gc.expire"] != "", kind(err))
	ls, err = lm.List(ctx, `labels."containerd.io/gc.expire"`)
	say("lease list by label", "%d %s", len(ls), kind(err))
	check("lease delete expiring", lm.Delete(ctx, exp))
	check("lease delete", lm.Delete(ctx, l, leases.SynchronousDelete))
	err = lm.Delete(ctx, l)
	say("lease delete again", "%s: %v", kind(err), err)
}

func snapshotSteps(ctx context.Context, client *containerd.Client) {
	// Under a lease, as the client's own operations are: no collection takes them meanwhile.
	ctx, done, err := client.WithLease(ctx)
	if !check("snapshot lease", err) {
		return
	}
	defer done(ctx)
	for _, name := range []string{"overlayfs", "native"} {
		sn := client.SnapshotService(name)
		p := func(step string) string { return name + " " + step }
		mounts, err := sn.Prepare(ctx, "go-a", "", snapshots.WithLabels(map[string]string{"x": "y"}))
		say(p("prepare"), "%d %s", len(mounts), kind(err))
		_, err = sn.Prepare(ctx, "go-a", "")
		say(p("prepare again"), "%s: %v", kind(err), err)
		_, err = sn.View(ctx, "go-v0", "go-a")
		say(p("view of active"), "%s: %v", kind(err), err)
		info, err := sn.Stat(ctx, "go-a")
		say(p("stat"), "%s %v %q %s %v %s", info.Name, info.Kind, info.Parent, labels(info.Labels), info.Created.Equal(info.Updated), kind(err))
		check(p("commit"), sn.Commit(ctx, "go-c", "go-a"))
		err = sn.Commit(ctx, "go-c2", "go-c")
		say(p("commit committed"), "%s: %v", kind(err), err)
		_, err = sn.Prepare(ctx, "go-b", "go-c")
		say(p("prepare child"), "%s", kind(err))
		err = sn.Remove(ctx, "go-c")
		say(p("remove parent"), "%s: %v", kind(err), err)
		u, err := sn.Usage(ctx, "go-b")
		say(p("usage"), "%d %d %s", u.Size, u.Inodes, kind(err))
		info, err = sn.Update(ctx, snapshots.Info{Name: "go-c", Labels: map[string]string{"l": "1"}}, "labels.l")
		say(p("update"), "%s %s", labels(info.Labels), kind(err))
		_, err = sn.Update(ctx, snapshots.Info{Name: "go-c"}, "name")
		say(p("update name"), "%s", kind(err))
		var walked []string
		err = sn.Walk(ctx, func(_ context.Context, i snapshots.Info) error { walked = append(walked, i.Name); return nil }, "labels.l==1")
		sort.Strings(walked)
		say(p("walk"), "%v %s", walked, kind(err))
		_, err = sn.Stat(ctx, "nope")
		say(p("stat missing"), "%s: %v", kind(err), err)
		check(p("remove child"), sn.Remove(ctx, "go-b"))
		check(p("remove"), sn.Remove(ctx, "go-c"))
		err = sn.Remove(ctx, "go-c")
		say(p("remove again"), "%s: %v", kind(err), err)
	}
}

func imageSteps(ctx context.Context, client *containerd.Client, archive string) containerd.Image {
	f, err := os.Open(archive)
	if !check("open archive", err) {
		return nil
	}
	defer f.Close()
	imgs, err := client.Import(ctx, f)
	names := []string{}
	for _, i := range imgs {
		names = append(names, i.Name)
	}
	say("import", "%v %s", names, kind(err))
	img, err := client.GetImage(ctx, image)
	if !check("get image", err) {
		return nil
	}
	say("image target", "%s %s", img.Target().MediaType, img.Target().Digest)
	unpacked, err := img.IsUnpacked(ctx, "overlayfs")
	say("is unpacked", "%v %s", unpacked, kind(err))
	check("unpack", img.Unpack(ctx, "overlayfs"))
	unpacked, err = img.IsUnpacked(ctx, "overlayfs")
	say("is unpacked after", "%v %s", unpacked, kind(err))
	size, err := img.Size(ctx)
	say("image size", "%d %s", size, kind(err))
	diffIDs, err := img.RootFS(ctx)
	say("image rootfs", "%v %s", diffIDs, kind(err))
	cfg, err := img.Config(ctx)
	say("image config", "%s %s", cfg.MediaType, kind(err))
	is := client.ImageService()
	_, err = is.Create(ctx, images.Image{Name: "example.com/go:1", Target: img.Target()})
	say("image create", "%s", kind(err))
	_, err = is.Create(ctx, images.Image{Name: "example.com/go:1", Target: img.Target()})
	say("image create again", "%s: %v", kind(err), err)
	_, err = is.Create(ctx, images.Image{Name: "", Target: img.Target()})
	say("image create no name", "%s: %v", kind(err), err)
	_, err = is.Create(ctx, images.Image{Name: "example.com/go:2"})
	say("image create no target", "%s: %v", kind(err), err)
	up, err := is.Update(ctx, images.Image{Name: "example.com/go:1", Labels: map[string]string{"a": "b"}}, "labels.a")
	say("image update", "%s %s", labels(up.Labels), kind(err))
	_, err = is.Update(ctx, images.Image{Name: "example.com/nope:1"})
	say("image update missing", "%s: %v", kind(err), err)
	list, err := is.List(ctx, "labels.a==b")
	say("image list", "%d %s", len(list), kind(err))
	_, err = is.List(ctx, "name==")
	say("image list bad filter", "%s: %v", kind(err), err)
	check("image delete", is.Delete(ctx, "example.com/go:1", images.SynchronousDelete()))
	err = is.Delete(ctx, "example.com/go:1")
	say("image delete again", "%s: %v", kind(err), err)
	return img
}

func containerSteps(ctx context.Context, client *containerd.Client, img containerd.Image) {
	c, err := client.NewContainer(ctx, "go-c1",
		containerd.WithImage(img),
		containerd.WithNewSnapshot("go-c1-snap", img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sh", "-c", "echo out; echo err >&2; exit 7")),
		containerd.WithContainerLabels(map[string]string{"app": "go"}),
	)
	if !check("new container", err) {
		return
	}
	_, err = client.NewContainer(ctx, "go-c1", containerd.WithNewSpec())
	say("new container again", "%s: %v", kind(err), err)
	_, err = client.NewContainer(ctx, "bad/id", containerd.WithNewSpec())
	say("new container bad id", "%s", kind(err))
	info, err := c.Info(ctx)
	say("container info", "%s %s %s %s %s", info.ID, info.Image, info.Runtime.Name, info.Snapshotter, info.SnapshotKey)
	got, err := c.SetLabels(ctx, map[string]string{"tier": "1"})
	say("container set labels", "%s %s", labels(got), kind(err))
	spec, err := c.Spec(ctx)
	say("container spec", "%v %s", spec.Process.Args, kind(err))
	err = c.Update(ctx, containerd.UpdateContainerOpts(func(ctx context.Context, client *containerd.Client, c *containers.Container) error {
		c.Labels["updated"] = "yes"
		return nil
	}))
	say("container update", "%s", kind(err))
	got, err = c.Labels(ctx)
	say("container labels", "%s %s", labels(got), kind(err))
	ext, err := c.Extensions(ctx)
	say("container extensions", "%d %s", len(ext), kind(err))
	_, err = client.Containers(ctx, "labels.app==")
	say("containers bad filter", "%s: %v", kind(err), err)
	_, err = client.LoadContainer(ctx, "nope")
	say("load missing container", "%s: %v", kind(err), err)
	list, err := client.Containers(ctx, "labels.app==go")
	say("containers filtered", "%d %s", len(list), kind(err))

	var out, errOut bytes.Buffer
	task, err := c.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, &out, &errOut)))
	if !check("new task", err) {
		return
	}
	_, err = c.NewTask(ctx, cio.NullIO)
	say("new task again", "%s: %v", kind(err), err)
	st, err := task.Status(ctx)
	say("task status created", "%s %s", st.Status, kind(err))
	exited, err := task.Wait(ctx)
	check("task wait", err)
	check("task start", task.Start(ctx))
	status := <-exited
	code, _, err := status.Result()
	say("task exit", "%d %s", code, kind(err))
	task.CloseIO(ctx, containerd.WithStdinCloser)
	time.Sleep(200 * time.Millisecond)
	say("task output", "%q %q", out.String(), errOut.String())
	st, err = task.Status(ctx)
	say("task status stopped", "%s %d %s", st.Status, st.ExitStatus, kind(err))
	err = task.Kill(ctx, syscall.SIGTERM)
	say("task kill stopped", "%s: %v", kind(err), err)
	ds, err := task.Delete(ctx)
	if err == nil {
		say("task delete", "%d", ds.ExitCode())
	} else {
		say("task delete", "%s: %v", kind(err), err)
	}
	_, err = c.Task(ctx, nil)
	say("task after delete", "%s: %v", kind(err), err)

	// A long-running task: exec, pids, pause, resume, metrics, kill.
	c2, err := client.NewContainer(ctx, "go-c2",
		containerd.WithNewSnapshot("go-c2-snap", img),
		containerd.WithNewSpec(oci.WithImageConfig(img), oci.WithProcessArgs("sleep", "300")),
	)
	if !check("new container 2", err) {
		return
	}
	t2, err := c2.NewTask(ctx, cio.NullIO)
	if !check("new task 2", err) {
		return
	}
	wait2, _ := t2.Wait(ctx)
	check("task 2 start", t2.Start(ctx))
	pids, err := t2.Pids(ctx)
	say("task 2 pids", "%d %s", len(pids), kind(err))
	pspec := spec.Process
	pspec.Args = []string{"sh", "-c", "exit 3"}
	var eout bytes.Buffer
	p, err := t2.Exec(ctx, "go-exec", pspec, cio.NewCreator(cio.WithStreams(nil, &eout, io.Discard)))
	if check("exec", err) {
		ew, _ := p.Wait(ctx)
		check("exec start", p.Start(ctx))
		es := <-ew
		say("exec exit", "%d", es.ExitCode())
		_, err = t2.Exec(ctx, "go-exec", pspec, cio.NullIO)
		say("exec again", "%s: %v", kind(err), err)
		_, err = p.Delete(ctx)
		say("exec delete", "%s", kind(err))
	}
	_, err = t2.Exec(ctx, "", pspec, cio.NullIO)
	say("exec empty id", "%s: %v", kind(err), err)
	limit := int64(64 << 20)
	err = t2.Update(ctx, containerd.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}))
	say("task update memory", "%s", kind(err))
	err = t2.Update(ctx, containerd.WithResources("not resources"))
	say("task update bad resources", "%s", kind(err))
	err = t2.Resize(ctx, 80, 24)
	say("resize without a terminal", "%s", kind(err))
	_, err = t2.Checkpoint(ctx)
	say("task checkpoint", "%s", kind(err))
	st, _ = t2.Status(ctx)
	say("status after checkpoint", "%s", st.Status)
	check("pause", t2.Pause(ctx))
	st, _ = t2.Status(ctx)
	say("paused status", "%s", st.Status)
	err = t2.Pause(ctx)
	say("pause again", "%s", kind(err))
	check("resume", t2.Resume(ctx))
	m, err := t2.Metrics(ctx)
	if err == nil {
		say("metrics", "%v %v", m.ID != "", m.Data != nil && m.Data.TypeUrl != "")
	} else {
		say("metrics", "%s: %v", kind(err), err)
	}
	err = t2.Kill(ctx, syscall.SIGKILL)
	check("kill", err)
	s2 := <-wait2
	say("killed exit", "%d", s2.ExitCode())
	_, err = t2.Delete(ctx)
	check("task 2 delete", err)
	check("container 2 delete", c2.Delete(ctx, containerd.WithSnapshotCleanup))
	check("container delete", c.Delete(ctx, containerd.WithSnapshotCleanup))
	err = c.Delete(ctx)
	say("container delete again", "%s: %v", kind(err), err)
	_, err = client.SnapshotService("overlayfs").Stat(ctx, "go-c1-snap")
	say("snapshot cleaned up", "%s", kind(err))
}

func cleanup(ctx context.Context, client *containerd.Client) {
	is := client.ImageService()
	err := is.Delete(ctx, image, images.SynchronousDelete())
	say("image delete", "%s", kind(err))
	var left []string
	client.ContentStore().Walk(ctx, func(i content.Info) error { left = append(left, i.Digest.String()); return nil })
	say("content left", "%d", len(left))
}
