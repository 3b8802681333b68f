package k8s

// TestManifests renders every overlay in overlays/ (kustomize's resources,
// replicas, images and secretGenerator, merged by hand here: no kustomize
// binary is needed), decodes every manifest strictly into the official API
// types (an unknown field fails), builds nice-coord and nice-worker and reads
// their flags from their -h output, and reads the HTTP paths they serve from
// the source of the coordinator and worker packages. Then it checks:
//
//  1. every .yaml file of base/ is listed in its kustomization's resources;
//  2. every flag in a container's command/args exists in that binary (its
//     subcommand's -h), given as --name=value; every $(VAR) in them is a
//     variable of the container; every NICE_* variable sets a flag that exists;
//  3. the ports in the --listen, --http and --gossip flags are the
//     container's ports named grpc, http, gossip-tcp and gossip-udp (gossip
//     is TCP and UDP), and the container declares no other port;
//  4. probes ask paths the binary serves (/healthz, /readyz), on a port that
//     is its --http port; liveness never asks /readyz; every container has a
//     liveness probe, workers a readiness probe on /readyz; the coordinator
//     has no readiness probe, or every Service in front of it publishes
//     not-ready addresses (it is ready only once workers train);
//  5. Prometheus annotations: scrape "true", a port that is --http, a path
//     served;
//  6. labels and selectors: each workload's selector matches its template;
//     each Service selects the pods of exactly one workload and its target
//     ports are ports of those pods with the same protocol; the
//     StatefulSet's serviceName is a headless Service in front of it; the
//     PodDisruptionBudget selects the workers and nothing else;
//  7. the addresses workers dial reach the coordinator: --coordinator names a
//     Service port whose target is the coordinator's --listen port, --join a
//     headless Service port (TCP and UDP) whose target is its --gossip port;
//  8. every volume mount names a volume (or a volumeClaimTemplate); the
//     coordinator's --state-dir lies inside a PersistentVolumeClaim's mount;
//  9. the credentials folder (--tls-dir or NICE_TLS_DIR) is the mount of a
//     Secret whose keys are exactly the files the binaries read (ca.crt,
//     node.crt, node.key, gossip.key, from internal/creds), in a mode no
//     other user can read (the binaries refuse that) that the pod's fsGroup
//     can; the Secret is what the overlay's secretGenerator makes, from
//     those same files;
// 10. terminationGracePeriodSeconds exceeds the worker's --leave-timeout and
//     the coordinator's --final-checkpoint-timeout (as given, or their
//     defaults from -h);
// 11. every container requests CPU and memory, and a memory limit is at
//     least its request;
// 12. the overlay: its replicas entry names the worker Deployment, and the
//     count it sets is at least the coordinator's --min-workers and above
//     the PodDisruptionBudget's maxUnavailable; each images entry names an
//     image the base uses.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"go.uber.org/goleak"

	"github.com/nice-flow/nice/internal/creds"
	"github.com/nice-flow/nice/internal/envflag"
)

// servingPackage is the package, from the module root, whose source says
// which HTTP paths a binary serves.
var servingPackage = map[string]string{"nice-coord": "coordinator", "nice-worker": "worker"}

// portFlags are the flags that carry a container's listening ports, and the
// port names and protocols the manifests must give them.
var portFlags = map[string][]namedPort{
	"listen": {{"grpc", corev1.ProtocolTCP}},
	"http":   {{"http", corev1.ProtocolTCP}},
	"gossip": {{"gossip-tcp", corev1.ProtocolTCP}, {"gossip-udp", corev1.ProtocolUDP}},
}

// dialFlags are the worker's flags that dial the coordinator, and the
// coordinator's flag that listens where they must arrive.
var dialFlags = map[string]string{"coordinator": "listen", "join": "gossip"}

type namedPort struct {
	name  string
	proto corev1.Protocol
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestManifests(t *testing.T) {
	root := moduleRoot(t)
	bins := buildBinaries(t, root)
	overlays, err := filepath.Glob("overlays/*/kustomization.yaml")
	if err != nil || len(overlays) == 0 {
		t.Fatalf("no overlays/*/kustomization.yaml (err %v)", err)
	}
	for _, k := range overlays {
		dir := filepath.Dir(k)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			set, err := render(dir)
			if err != nil {
				t.Fatal(err)
			}
			c := &checker{t: t, set: set, bins: bins, root: root}
			c.run()
		})
	}
}

// --- kustomize, by hand --------------------------------------------------

// kustomization holds the fields of kustomization.yaml the manifests use;
// decoding is strict, so a field this test does not model fails it.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Replicas   []struct {
		Name  string `json:"name"`
		Count int32  `json:"count"`
	} `json:"replicas"`
	Images []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
		Digest  string `json:"digest"`
	} `json:"images"`
	SecretGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"secretGenerator"`
}

// object is one decoded manifest.
type object struct {
	where string // file and kind/name, for messages
	obj   any
}

// rendered is what kubectl apply -k would send, as far as the checks need.
type rendered struct {
	objects []object
	// secrets are the generated Secrets: name -> keys.
	secrets map[string][]string
	// replicaNames are the workloads an overlay's replicas entries named.
	replicaNames []string
}

func render(dir string) (*rendered, error) {
	var k kustomization
	if err := decodeFile(filepath.Join(dir, "kustomization.yaml"), &k); err != nil {
		return nil, err
	}
	if k.Kind != "Kustomization" || !strings.HasPrefix(k.APIVersion, "kustomize.config.k8s.io/") {
		return nil, fmt.Errorf("%s/kustomization.yaml: apiVersion %q kind %q is not a kustomization", dir, k.APIVersion, k.Kind)
	}
	r := &rendered{secrets: map[string][]string{}}
	listed := map[string]bool{}
	for _, res := range k.Resources {
		p := filepath.Join(dir, res)
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s/kustomization.yaml: resource %s: %w", dir, res, err)
		}
		if st.IsDir() {
			sub, err := render(p)
			if err != nil {
				return nil, err
			}
			r.objects = append(r.objects, sub.objects...)
			for n, keys := range sub.secrets {
				r.secrets[n] = keys
			}
			r.replicaNames = append(r.replicaNames, sub.replicaNames...)
			continue
		}
		listed[filepath.Clean(p)] = true
		objs, err := decodeManifests(p)
		if err != nil {
			return nil, err
		}
		r.objects = append(r.objects, objs...)
	}
	// A manifest left out of resources would be neither applied nor checked.
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range files {
		if filepath.Base(f) != "kustomization.yaml" && !listed[filepath.Clean(f)] {
			return nil, fmt.Errorf("%s is not listed in %s/kustomization.yaml's resources", f, dir)
		}
	}
	for _, rep := range k.Replicas {
		found := false
		for _, o := range r.objects {
			if d, ok := o.obj.(*appsv1.Deployment); ok && d.Name == rep.Name {
				d.Spec.Replicas = ptr(rep.Count)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("%s/kustomization.yaml: replicas names %q, which is no Deployment of its resources", dir, rep.Name)
		}
		r.replicaNames = append(r.replicaNames, rep.Name)
	}
	for _, img := range k.Images {
		found := false
		for _, o := range r.objects {
			for _, c := range containersOf(o.obj) {
				if imageName(c.Image) != img.Name {
					continue
				}
				found = true
				name, tag := img.Name, strings.TrimPrefix(c.Image, imageName(c.Image))
				if img.NewName != "" {
					name = img.NewName
				}
				if img.NewTag != "" {
					tag = ":" + img.NewTag
				}
				if img.Digest != "" {
					tag = "@" + img.Digest
				}
				c.Image = name + tag
			}
		}
		if !found {
			return nil, fmt.Errorf("%s/kustomization.yaml: images names %q, which no container of its resources uses", dir, img.Name)
		}
	}
	for _, g := range k.SecretGenerator {
		var keys []string
		for _, f := range g.Files {
			key, file, ok := strings.Cut(f, "=")
			if !ok {
				key, file = path.Base(f), f
			}
			if strings.Contains(file, "..") || filepath.IsAbs(file) {
				return nil, fmt.Errorf("%s/kustomization.yaml: secretGenerator %s: %s is outside the kustomization's folder (kustomize refuses it)", dir, g.Name, file)
			}
			keys = append(keys, key)
		}
		r.secrets[g.Name] = keys
	}
	return r, nil
}

func imageName(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

func decodeFile(p string, v any) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// decodeManifests decodes each document of p strictly into its API type.
func decodeManifests(p string) ([]object, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	var out []object
	for i, doc := range docSep.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("%s, document %d: %w", p, i+1, err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			obj = &appsv1.Deployment{}
		case "apps/v1 StatefulSet":
			obj = &appsv1.StatefulSet{}
		case "v1 Service":
			obj = &corev1.Service{}
		case "v1 Secret":
			obj = &corev1.Secret{}
		case "policy/v1 PodDisruptionBudget":
			obj = &policyv1.PodDisruptionBudget{}
		default:
			return nil, fmt.Errorf("%s, document %d: %s %s: this test knows no such type (add it to decodeManifests)", p, i+1, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("%s, document %d (%s): %w", p, i+1, tm.Kind, err)
		}
		name := obj.(metav1.Object).GetName()
		if name == "" {
			return nil, fmt.Errorf("%s, document %d (%s): no metadata.name", p, i+1, tm.Kind)
		}
		out = append(out, object{where: fmt.Sprintf("%s: %s/%s", p, tm.Kind, name), obj: obj})
	}
	return out, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func ptr[T any](v T) *T { return &v }

// --- the binaries --------------------------------------------------------

func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// binary is what the manifests may rely on in one binary.
type binary struct {
	path  string
	paths map[string]bool // HTTP paths served
	help  map[string]map[string]flagInfo
}

type flagInfo struct {
	def string // default, unquoted; "" if none is printed
}

func buildBinaries(t *testing.T, root string) map[string]*binary {
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/nice-coord", "./cmd/nice-worker")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bins := map[string]*binary{}
	for name, pkg := range servingPackage {
		paths, err := servedPaths(filepath.Join(root, pkg))
		if err != nil {
			t.Fatal(err)
		}
		bins[name] = &binary{path: filepath.Join(dir, name), paths: paths, help: map[string]map[string]flagInfo{}}
	}
	return bins
}

// flags returns the flags of the binary's subcommand sub (nil: the
// binary's own), from its -h output.
func (b *binary) flags(sub []string) (map[string]flagInfo, error) {
	key := strings.Join(sub, " ")
	if f, ok := b.help[key]; ok {
		return f, nil
	}
	cmd := exec.Command(b.path, append(slices.Clone(sub), "-h")...)
	out, _ := cmd.CombinedOutput() // -h exits 0 or 2 depending on the command; the text is what counts
	f := parseHelp(string(out))
	if len(f) == 0 {
		return nil, fmt.Errorf("%s %s -h printed no flags:\n%s", filepath.Base(b.path), key, out)
	}
	b.help[key] = f
	return f, nil
}

var (
	flagLine = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9-]*)(?: [^\t]+)?(?:\t(.*))?$`)
	defRe    = regexp.MustCompile(`\(default (.*)\)$`)
)

// parseHelp reads the flag package's PrintDefaults format.
func parseHelp(help string) map[string]flagInfo {
	flags := map[string]flagInfo{}
	var cur string
	for _, l := range strings.Split(help, "\n") {
		if m := flagLine.FindStringSubmatch(l); m != nil {
			cur = m[1]
			flags[cur] = flagInfo{}
			l = m[2] // a one-letter flag's usage follows on its line
		} else if cur == "" || !strings.HasPrefix(l, "    \t") {
			continue
		}
		if m := defRe.FindStringSubmatch(l); m != nil {
			d := m[1]
			if u, err := strconv.Unquote(d); err == nil {
				d = u
			}
			flags[cur] = flagInfo{def: d}
		}
	}
	return flags
}

// servedPaths reads the patterns that the package's non-test files register
// with Handle and HandleFunc ("GET /healthz" -> /healthz).
func servedPaths(dir string) (map[string]bool, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	paths := map[string]bool{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("reading the served paths: %w", err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			pat, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			if _, p, ok := strings.Cut(pat, " "); ok {
				pat = p
			}
			paths[strings.TrimSuffix(pat, "{$}")] = true
			return true
		})
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("no HTTP handlers found in %s", dir)
	}
	return paths, nil
}

// --- the checks ----------------------------------------------------------

type checker struct {
	t    *testing.T
	set  *rendered
	bins map[string]*binary
	root string
}

// workload is a Deployment or StatefulSet with what the checks need.
type workload struct {
	where    string
	name     string
	kind     string
	replicas int32
	selector *metav1.LabelSelector
	pod      *corev1.PodTemplateSpec
	claims   []corev1.PersistentVolumeClaim
	obj      any
}

// container is one container of a workload, with its binary's view of it.
type container struct {
	w     *workload
	c     *corev1.Container
	where string
	bin   string            // base name of the binary
	sub   []string          // subcommand
	flags map[string]string // effective value of each flag: args, else NICE_* env, else default
	given map[string]bool   // flags given by args or env
}

func (c *checker) errorf(where, format string, args ...any) {
	c.t.Helper()
	c.t.Errorf("%s: %s", where, fmt.Sprintf(format, args...))
}

func (c *checker) workloads() []*workload {
	var ws []*workload
	for _, o := range c.set.objects {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, &workload{where: o.where, name: v.Name, kind: "Deployment", replicas: deref(v.Spec.Replicas, 1),
				selector: v.Spec.Selector, pod: &v.Spec.Template, obj: v})
		case *appsv1.StatefulSet:
			ws = append(ws, &workload{where: o.where, name: v.Name, kind: "StatefulSet", replicas: deref(v.Spec.Replicas, 1),
				selector: v.Spec.Selector, pod: &v.Spec.Template, claims: v.Spec.VolumeClaimTemplates, obj: v})
		}
	}
	return ws
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func containersOf(obj any) []*corev1.Container {
	var spec *corev1.PodSpec
	switch v := obj.(type) {
	case *appsv1.Deployment:
		spec = &v.Spec.Template.Spec
	case *appsv1.StatefulSet:
		spec = &v.Spec.Template.Spec
	default:
		return nil
	}
	var cs []*corev1.Container
	for i := range spec.InitContainers {
		cs = append(cs, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		cs = append(cs, &spec.Containers[i])
	}
	return cs
}

func (c *checker) services() []*corev1.Service {
	var ss []*corev1.Service
	for _, o := range c.set.objects {
		if s, ok := o.obj.(*corev1.Service); ok {
			ss = append(ss, s)
		}
	}
	return ss
}

func (c *checker) run() {
	ws := c.workloads()
	if len(ws) == 0 {
		c.t.Fatal("no Deployment or StatefulSet rendered")
	}
	var all []*container
	for _, w := range ws {
		c.checkSelector(w)
		for _, ct := range containersOf(w.obj) {
			if k := c.container(w, ct); k != nil {
				all = append(all, k)
			}
		}
	}
	byRole := map[string][]*container{}
	for _, k := range all {
		byRole[k.role()] = append(byRole[k.role()], k)
		c.checkPorts(k)
		c.checkProbes(k)
		c.checkPrometheus(k)
		c.checkVolumes(k)
		c.checkCredentials(k)
		c.checkGrace(k)
		c.checkResources(k)
	}
	if len(byRole["coordinator"]) != 1 || len(byRole["worker"]) == 0 {
		c.t.Fatalf("want one coordinator (nice-coord serve) and workers (nice-worker); got %d and %d", len(byRole["coordinator"]), len(byRole["worker"]))
	}
	coord := byRole["coordinator"][0]
	c.checkServices(ws)
	c.checkCoordinator(coord)
	for _, wk := range byRole["worker"] {
		c.checkDial(wk, coord)
	}
	c.checkPDB(ws, byRole["worker"])
	c.checkReplicas(byRole["worker"], coord)
}

// command is the binary and subcommand, for messages.
func (k *container) command() string {
	return strings.Join(append([]string{k.bin}, k.sub...), " ")
}

func (k *container) role() string {
	switch {
	case k.bin == "nice-coord" && slices.Equal(k.sub, []string{"serve"}):
		return "coordinator"
	case k.bin == "nice-worker" && len(k.sub) == 0:
		return "worker"
	}
	return k.command()
}

func (c *checker) checkSelector(w *workload) {
	if w.selector == nil || len(w.selector.MatchLabels)+len(w.selector.MatchExpressions) == 0 {
		c.errorf(w.where, "no selector")
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(w.selector)
	if err != nil {
		c.errorf(w.where, "selector: %v", err)
		return
	}
	if !sel.Matches(labels.Set(w.pod.Labels)) {
		c.errorf(w.where, "selector %s does not match the pod template's labels %v", sel, w.pod.Labels)
	}
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// container parses a container's command line against its binary's flags.
func (c *checker) container(w *workload, ct *corev1.Container) *container {
	where := fmt.Sprintf("%s container %s", w.where, ct.Name)
	argv := append(slices.Clone(ct.Command), ct.Args...)
	if len(ct.Command) == 0 {
		c.errorf(where, "no command: the image's default is help, not a server")
		return nil
	}
	bin := path.Base(argv[0])
	b, ok := c.bins[bin]
	if !ok {
		c.errorf(where, "runs %s, which is not one of the binaries %v", argv[0], keys(c.bins))
		return nil
	}
	k := &container{w: w, c: ct, where: where, bin: bin, flags: map[string]string{}, given: map[string]bool{}}
	rest := argv[1:]
	for len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		k.sub, rest = append(k.sub, rest[0]), rest[1:]
	}
	flags, err := b.flags(k.sub)
	if err != nil {
		c.errorf(where, "%v", err)
		return nil
	}
	env := map[string]string{}
	for _, e := range ct.Env {
		if e.ValueFrom != nil {
			env[e.Name] = "$(" + e.Name + ")"
		} else {
			env[e.Name] = e.Value
		}
	}
	for name, f := range flags {
		k.flags[name] = f.def
	}
	for _, e := range ct.Env {
		if !strings.HasPrefix(e.Name, "NICE_") {
			continue
		}
		found := false
		for name := range flags {
			if envflag.Name(name) == e.Name {
				k.flags[name], k.given[name], found = env[e.Name], true, true
			}
		}
		if !found {
			c.errorf(where, "environment variable %s sets no flag of %s (see its -h)", e.Name, k.command())
		}
	}
	for _, a := range rest {
		for _, m := range varRef.FindAllStringSubmatch(a, -1) {
			if _, ok := env[m[1]]; !ok {
				c.errorf(where, "argument %q refers to $(%s), which is not a variable of the container (Kubernetes would pass it literally)", a, m[1])
			}
		}
		if !strings.HasPrefix(a, "--") {
			c.errorf(where, "argument %q: write flags as --name=value (or --name for a boolean)", a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if _, ok := flags[name]; !ok {
			c.errorf(where, "flag --%s does not exist in %s (its -h lists %v)", name, k.command(), keys(flags))
			continue
		}
		if !hasVal {
			val = "true"
		}
		k.flags[name], k.given[name] = val, true
	}
	return k
}

func keys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// port is the port number of an address flag, or 0 if the flag is empty
// or absent.
func (k *container) port(flag string) (int32, error) {
	v := k.flags[flag]
	if v == "" {
		return 0, nil
	}
	_, p, err := net.SplitHostPort(v)
	if err != nil {
		return 0, fmt.Errorf("--%s=%s: %w", flag, v, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--%s=%s: the port must be a fixed number for a container port", flag, v)
	}
	return int32(n), nil
}

func (c *checker) checkPorts(k *container) {
	accounted := map[string]bool{}
	for flag, want := range portFlags {
		if _, ok := k.flags[flag]; !ok {
			continue
		}
		p, err := k.port(flag)
		if err != nil {
			c.errorf(k.where, "%v", err)
			continue
		}
		if p == 0 {
			continue
		}
		for _, np := range want {
			cp := findPort(k.c, np.name)
			switch {
			case cp == nil:
				c.errorf(k.where, "--%s listens on port %d: declare it as a container port named %s (%s)", flag, p, np.name, np.proto)
			case cp.ContainerPort != p:
				c.errorf(k.where, "container port %s is %d but --%s=%s listens on %d", np.name, cp.ContainerPort, flag, k.flags[flag], p)
			case protocol(cp.Protocol) != np.proto:
				c.errorf(k.where, "container port %s is %s, want %s", np.name, protocol(cp.Protocol), np.proto)
			}
			accounted[np.name] = true
		}
	}
	for _, cp := range k.c.Ports {
		if !accounted[cp.Name] {
			c.errorf(k.where, "container port %q (%d) matches no listening flag of the binary (%v)", cp.Name, cp.ContainerPort, keys(portFlags))
		}
	}
}

// protocol is p, or TCP if p is unset (the API's default).
func protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func findPort(ct *corev1.Container, name string) *corev1.ContainerPort {
	for i := range ct.Ports {
		if ct.Ports[i].Name == name {
			return &ct.Ports[i]
		}
	}
	return nil
}

// resolvePort turns a probe's or Service's target port into a number.
func resolvePort(ct *corev1.Container, p intstr.IntOrString, proto corev1.Protocol) (int32, bool) {
	for _, cp := range ct.Ports {
		if protocol(cp.Protocol) != proto {
			continue
		}
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func (c *checker) checkProbes(k *container) {
	httpPort, err := k.port("http")
	if err != nil {
		return // reported by checkPorts
	}
	probes := []struct {
		kind string
		p    *corev1.Probe
	}{{"liveness", k.c.LivenessProbe}, {"readiness", k.c.ReadinessProbe}, {"startup", k.c.StartupProbe}}
	for _, pr := range probes {
		if pr.p == nil {
			continue
		}
		where := fmt.Sprintf("%s %sProbe", k.where, pr.kind)
		g := pr.p.HTTPGet
		if g == nil {
			c.errorf(where, "not an httpGet probe: the images have no shell; ask /healthz or /readyz on the --http port")
			continue
		}
		if !c.bins[k.bin].paths[g.Path] {
			c.errorf(where, "path %s is not served by %s (it serves %v)", g.Path, k.bin, keys(c.bins[k.bin].paths))
		}
		if pr.kind != "readiness" && g.Path == "/readyz" {
			c.errorf(where, "asks /readyz: a %s probe must ask /healthz (not ready is not dead: the coordinator is not ready until workers train, a worker while the coordinator is away)", pr.kind)
		}
		n, ok := resolvePort(k.c, g.Port, corev1.ProtocolTCP)
		switch {
		case !ok:
			c.errorf(where, "port %s is not a TCP port of the container", g.Port.String())
		case httpPort == 0:
			c.errorf(where, "the container has no --http port (--http is empty)")
		case n != httpPort:
			c.errorf(where, "port %s is %d, but the binary serves HTTP on --http=%s", g.Port.String(), n, k.flags["http"])
		}
	}
	if k.c.LivenessProbe == nil {
		c.errorf(k.where, "no livenessProbe (GET /healthz on the http port)")
	}
	if k.role() == "worker" && (k.c.ReadinessProbe == nil || k.c.ReadinessProbe.HTTPGet == nil || k.c.ReadinessProbe.HTTPGet.Path != "/readyz") {
		c.errorf(k.where, "a worker needs a readinessProbe on /readyz")
	}
}

func (c *checker) checkPrometheus(k *container) {
	a := k.w.pod.Annotations
	where := k.where + " pod annotations"
	if a["prometheus.io/scrape"] != "true" {
		c.errorf(where, `prometheus.io/scrape is %q, want "true"`, a["prometheus.io/scrape"])
		return
	}
	httpPort, err := k.port("http")
	if err != nil {
		return
	}
	if a["prometheus.io/port"] != strconv.Itoa(int(httpPort)) {
		c.errorf(where, "prometheus.io/port is %q, but the binary serves /metrics on --http=%s", a["prometheus.io/port"], k.flags["http"])
	}
	if p := a["prometheus.io/path"]; !c.bins[k.bin].paths[p] {
		c.errorf(where, "prometheus.io/path %q is not served by %s", p, k.bin)
	}
}

func (c *checker) checkVolumes(k *container) {
	vols := map[string]*corev1.Volume{}
	for i := range k.w.pod.Spec.Volumes {
		vols[k.w.pod.Spec.Volumes[i].Name] = &k.w.pod.Spec.Volumes[i]
	}
	claims := map[string]bool{}
	for _, pvc := range k.w.claims {
		claims[pvc.Name] = true
		if _, ok := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
			c.errorf(k.w.where, "volumeClaimTemplate %s requests no storage", pvc.Name)
		}
	}
	for _, m := range k.c.VolumeMounts {
		if vols[m.Name] == nil && !claims[m.Name] {
			c.errorf(k.where, "volumeMount %s (%s) names no volume of the pod and no volumeClaimTemplate", m.Name, m.MountPath)
		}
	}
	if _, ok := k.flags["state-dir"]; ok && k.role() == "coordinator" {
		dir := path.Clean(k.flags["state-dir"])
		inClaim := false
		for _, m := range k.c.VolumeMounts {
			if claims[m.Name] && (dir == path.Clean(m.MountPath) || strings.HasPrefix(dir, path.Clean(m.MountPath)+"/")) {
				inClaim = true
			}
		}
		if !inClaim {
			c.errorf(k.where, "--state-dir=%s is not inside the mount of a volumeClaimTemplate: checkpoints would be lost with the pod", dir)
		}
	}
}

func (c *checker) checkCredentials(k *container) {
	dir, ok := k.flags["tls-dir"]
	if !ok {
		return
	}
	if k.flags["insecure"] == "true" {
		c.errorf(k.where, "--insecure: the cluster must run with its credentials")
		return
	}
	if dir == "" {
		c.errorf(k.where, "no credentials: set NICE_TLS_DIR (or --tls-dir) to the mount of the credentials Secret")
		return
	}
	var mount *corev1.VolumeMount
	for i, m := range k.c.VolumeMounts {
		if path.Clean(m.MountPath) == path.Clean(dir) {
			mount = &k.c.VolumeMounts[i]
		}
	}
	if mount == nil {
		c.errorf(k.where, "the credentials folder %s (NICE_TLS_DIR / --tls-dir) is not a volume mount", dir)
		return
	}
	var sv *corev1.SecretVolumeSource
	for _, v := range k.w.pod.Spec.Volumes {
		if v.Name == mount.Name {
			sv = v.Secret
		}
	}
	if sv == nil {
		c.errorf(k.where, "the credentials folder %s is volume %s, which is not a Secret", dir, mount.Name)
		return
	}
	want := slices.Clone(creds.Files)
	sort.Strings(want)
	var got []string
	for _, it := range sv.Items {
		got = append(got, it.Key)
		if it.Path != it.Key {
			c.errorf(k.where, "secret item %s is mounted as %s: give each item the path of its key, the file name the binaries read", it.Key, it.Path)
		}
		if it.Mode != nil {
			c.checkMode(k, it.Key, *it.Mode)
		}
	}
	sort.Strings(got)
	if len(sv.Items) > 0 && !slices.Equal(got, want) {
		c.errorf(k.where, "secret %s mounts the keys %v; the binaries read exactly %v", sv.SecretName, got, want)
	}
	c.checkMode(k, "defaultMode", deref(sv.DefaultMode, corev1.SecretVolumeSourceDefaultMode))
	gen, ok := c.set.secrets[sv.SecretName]
	if !ok {
		c.errorf(k.where, "secret %s is not made by the overlay's secretGenerator (it makes %v)", sv.SecretName, keys(c.set.secrets))
		return
	}
	gen = slices.Clone(gen)
	sort.Strings(gen)
	if !slices.Equal(gen, want) {
		c.errorf(k.where, "the secretGenerator %s makes the keys %v; the binaries read exactly %v", sv.SecretName, gen, want)
	}
}

func (c *checker) checkMode(k *container, what string, mode int32) {
	if mode&0o007 != 0 {
		c.errorf(k.where, "credentials %s %04o: readable by every user, which the binaries refuse for node.key and gossip.key; use 0440 with the pod's fsGroup", what, mode)
	}
	sc := k.w.pod.Spec.SecurityContext
	if mode&0o040 == 0 || sc == nil || sc.FSGroup == nil {
		c.errorf(k.where, "credentials %s %04o: the image's non-root user reads them only through the pod's fsGroup and a group-readable mode (0440)", what, mode)
	}
}

func (c *checker) checkGrace(k *container) {
	var flag string
	switch k.role() {
	case "worker":
		flag = "leave-timeout"
	case "coordinator":
		flag = "final-checkpoint-timeout"
	default:
		return
	}
	d, err := time.ParseDuration(k.flags[flag])
	if err != nil {
		c.errorf(k.where, "--%s=%q: %v", flag, k.flags[flag], err)
		return
	}
	grace := time.Duration(deref(k.w.pod.Spec.TerminationGracePeriodSeconds, corev1.DefaultTerminationGracePeriodSeconds)) * time.Second
	if grace <= d {
		c.errorf(k.where, "terminationGracePeriodSeconds %s does not exceed --%s %s: the pod would be killed before its state is checkpointed", grace, flag, d)
	}
}

func (c *checker) checkResources(k *container) {
	req, lim := k.c.Resources.Requests, k.c.Resources.Limits
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := req[r]; !ok {
			c.errorf(k.where, "no %s request", r)
		}
	}
	if l, ok := lim[corev1.ResourceMemory]; ok {
		if r, ok := req[corev1.ResourceMemory]; ok && l.Cmp(r) < 0 {
			c.errorf(k.where, "memory limit %s is below its request %s", l.String(), r.String())
		}
	}
}

// selected returns the workloads whose pods the selector matches.
func selected(ws []*workload, sel labels.Selector) []*workload {
	var out []*workload
	for _, w := range ws {
		if sel.Matches(labels.Set(w.pod.Labels)) {
			out = append(out, w)
		}
	}
	return out
}

func (c *checker) checkServices(ws []*workload) {
	for _, s := range c.services() {
		where := "Service/" + s.Name
		if len(s.Spec.Selector) == 0 {
			c.errorf(where, "no selector")
			continue
		}
		backs := selected(ws, labels.SelectorFromSet(s.Spec.Selector))
		if len(backs) != 1 {
			c.errorf(where, "selector %v matches the pods of %d workloads, want exactly one", s.Spec.Selector, len(backs))
			continue
		}
		for _, sp := range s.Spec.Ports {
			proto := protocol(sp.Protocol)
			tp := sp.TargetPort
			if tp.Type == intstr.Int && tp.IntVal == 0 {
				tp = intstr.FromInt32(sp.Port)
			}
			found := false
			for _, ct := range containersOf(backs[0].obj) {
				if _, ok := resolvePort(ct, tp, proto); ok {
					found = true
				}
			}
			if !found {
				c.errorf(where, "port %s (%d/%s) targets %s, which is no %s port of %s's pods", sp.Name, sp.Port, proto, tp.String(), proto, backs[0].name)
			}
		}
	}
	for _, w := range ws {
		ss, ok := w.obj.(*appsv1.StatefulSet)
		if !ok {
			continue
		}
		s := c.service(ss.Spec.ServiceName)
		switch {
		case s == nil:
			c.errorf(w.where, "serviceName %q names no Service", ss.Spec.ServiceName)
		case s.Spec.ClusterIP != corev1.ClusterIPNone:
			c.errorf(w.where, "serviceName %q is not headless (clusterIP: None)", ss.Spec.ServiceName)
		case !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.pod.Labels)):
			c.errorf(w.where, "serviceName %q does not select its pods", ss.Spec.ServiceName)
		}
	}
}

func (c *checker) service(name string) *corev1.Service {
	for _, s := range c.services() {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// checkCoordinator: the workers must reach the coordinator before it is
// ready, so no Service in front of it may wait for readiness.
func (c *checker) checkCoordinator(coord *container) {
	if coord.c.ReadinessProbe == nil {
		return
	}
	for _, s := range c.services() {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(coord.w.pod.Labels)) && !s.Spec.PublishNotReadyAddresses {
			c.errorf("Service/"+s.Name, "the coordinator has a readiness probe, so this Service must set publishNotReadyAddresses: the coordinator becomes ready only once workers train, and they must reach it first")
		}
	}
}

// checkDial: each address a worker dials is a Service port that reaches the
// coordinator's matching listener.
func (c *checker) checkDial(wk, coord *container) {
	for flag, target := range dialFlags {
		v := wk.flags[flag]
		if v == "" {
			c.errorf(wk.where, "--%s is empty: the worker must reach the coordinator's --%s", flag, target)
			continue
		}
		host, p, err := net.SplitHostPort(v)
		if err != nil {
			c.errorf(wk.where, "--%s=%s: %v", flag, v, err)
			continue
		}
		port, _ := strconv.Atoi(p)
		s := c.service(strings.TrimSuffix(strings.Split(host, ".")[0], "."))
		if s == nil {
			c.errorf(wk.where, "--%s=%s: %s is not a Service of the manifests", flag, v, host)
			continue
		}
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(coord.w.pod.Labels)) {
			c.errorf(wk.where, "--%s=%s: Service %s does not select the coordinator's pods", flag, v, s.Name)
			continue
		}
		want, err := coord.port(target)
		if err != nil || want == 0 {
			c.errorf(wk.where, "--%s=%s: the coordinator's --%s has no port (%v)", flag, v, target, err)
			continue
		}
		protos := []corev1.Protocol{corev1.ProtocolTCP}
		if target == "gossip" {
			protos = append(protos, corev1.ProtocolUDP)
			if s.Spec.ClusterIP != corev1.ClusterIPNone {
				c.errorf(wk.where, "--%s=%s: gossip needs the coordinator's own address: Service %s must be headless (clusterIP: None)", flag, v, s.Name)
			}
		}
		for _, proto := range protos {
			ok := false
			for _, sp := range s.Spec.Ports {
				if sp.Port != int32(port) || protocol(sp.Protocol) != proto {
					continue
				}
				tp := sp.TargetPort
				if tp.Type == intstr.Int && tp.IntVal == 0 {
					tp = intstr.FromInt32(sp.Port)
				}
				if n, found := resolvePort(coord.c, tp, proto); found && n == want {
					ok = true
				}
			}
			if !ok {
				c.errorf(wk.where, "--%s=%s: Service %s has no %s port %d that reaches the coordinator's --%s=%s (port %d)", flag, v, s.Name, proto, port, target, coord.flags[target], want)
			}
		}
	}
}

func (c *checker) checkPDB(ws []*workload, workers []*container) {
	n := 0
	for _, o := range c.set.objects {
		pdb, ok := o.obj.(*policyv1.PodDisruptionBudget)
		if !ok {
			continue
		}
		n++
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || sel.Empty() {
			c.errorf(o.where, "selector %v: %v", pdb.Spec.Selector, err)
			continue
		}
		got := selected(ws, sel)
		if len(got) != 1 || got[0] != workers[0].w {
			var names []string
			for _, w := range got {
				names = append(names, w.name)
			}
			c.errorf(o.where, "selects the pods of %v, want the workers' (%s) only", names, workers[0].w.name)
			continue
		}
		if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
			c.errorf(o.where, "sets neither maxUnavailable nor minAvailable")
		}
		if mu := pdb.Spec.MaxUnavailable; mu != nil && mu.Type == intstr.Int && mu.IntVal < 1 {
			c.errorf(o.where, "maxUnavailable %d blocks every node drain", mu.IntVal)
		}
		if mu := pdb.Spec.MaxUnavailable; mu != nil && mu.Type == intstr.Int && mu.IntVal >= got[0].replicas {
			c.errorf(o.where, "maxUnavailable %d with %d workers lets a drain evict every worker at once", mu.IntVal, got[0].replicas)
		}
		if ma := pdb.Spec.MinAvailable; ma != nil && ma.Type == intstr.Int && ma.IntVal >= got[0].replicas {
			c.errorf(o.where, "minAvailable %d with %d workers blocks every node drain", ma.IntVal, got[0].replicas)
		}
	}
	if n == 0 {
		c.errorf("manifests", "no PodDisruptionBudget for the workers")
	}
}

func (c *checker) checkReplicas(workers []*container, coord *container) {
	w := workers[0].w
	if !slices.Contains(c.set.replicaNames, w.name) {
		c.errorf("overlay", "its replicas do not name the worker Deployment %s (they name %v)", w.name, c.set.replicaNames)
	}
	minW, err := strconv.Atoi(coord.flags["min-workers"])
	if err != nil {
		c.errorf(coord.where, "--min-workers=%q: %v", coord.flags["min-workers"], err)
		return
	}
	if int(w.replicas) < minW {
		c.errorf(w.where, "%d replicas, fewer than the coordinator's --min-workers=%d: it would never train", w.replicas, minW)
	}
}

// TestHelpParse pins the -h format the manifest test reads.
func TestHelpParse(t *testing.T) {
	got := parseHelp("Usage: x\n  -http address\n    \tHTTP (default \":7081\")\n  -v\tlog (default true)\n" +
		"  -leave-timeout duration\n    \ton SIGTERM\n    \tmore (default 20s)\n  -id string\n    \tid\n  -tls-dir nice-coord init\n    \tfolder\n")
	want := map[string]flagInfo{"http": {def: ":7081"}, "v": {def: "true"}, "leave-timeout": {def: "20s"}, "id": {}, "tls-dir": {}}
	if !maps.Equal(got, want) {
		t.Fatalf("parseHelp: got %v, want %v", got, want)
	}
}
