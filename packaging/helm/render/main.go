// Command render does what `helm template` does with this repository's chart, with the
// libraries Helm 3 renders with: Go's text/template, Masterminds/sprig v3 (Helm's function
// library, less env and expandenv), ghodss/yaml (the parent of sigs.k8s.io/yaml, same
// behaviour) and xeipuuv/gojsonschema for values.schema.json. Helm itself is in no registry
// this project's CI reaches; Debian packages these libraries (scripts/check-helm.sh).
//
//	render CHART_DIR [-f values.yaml]... [--name RELEASE] [--namespace NS]
//	       [--api-versions group/version]... [--notes]
//
// Prints the manifests as helm template does ("---", "# Source: …", the document), in file
// name order; an error is printed as Helm prints it, with exit code 1.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	sprig "github.com/Masterminds/sprig/v3"
	"github.com/ghodss/yaml"
	"github.com/xeipuuv/gojsonschema"
)

type options struct {
	chart       string
	valueFiles  []string
	release     string
	namespace   string
	apiVersions []string
	notes       bool
}

func main() {
	opts, err := parseArgs(os.Args[1:])
	if err == nil {
		err = run(opts)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %s\n", err)
		os.Exit(1)
	}
}

func parseArgs(args []string) (options, error) {
	opts := options{release: "release-name", namespace: "default"}
	for i := 0; i < len(args); i++ {
		flagValue := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", args[i])
			}
			i++
			return args[i], nil
		}
		var err error
		var value string
		switch args[i] {
		case "-f", "--values":
			value, err = flagValue()
			opts.valueFiles = append(opts.valueFiles, value)
		case "--name":
			opts.release, err = flagValue()
		case "--namespace":
			opts.namespace, err = flagValue()
		case "--api-versions":
			value, err = flagValue()
			opts.apiVersions = append(opts.apiVersions, value)
		case "--notes":
			opts.notes = true
		default:
			if opts.chart != "" {
				return opts, fmt.Errorf("unexpected argument %q", args[i])
			}
			opts.chart = args[i]
		}
		if err != nil {
			return opts, err
		}
	}
	if opts.chart == "" {
		return opts, errors.New("usage: render CHART_DIR [-f values.yaml]... [--name RELEASE]")
	}
	return opts, nil
}

func run(opts options) error {
	chart, err := readYAMLMap(filepath.Join(opts.chart, "Chart.yaml"))
	if err != nil {
		return err
	}
	values, err := readYAMLMap(filepath.Join(opts.chart, "values.yaml"))
	if err != nil {
		return err
	}
	for _, file := range opts.valueFiles {
		user, err := readYAMLMap(file)
		if err != nil {
			return err
		}
		values = coalesce(user, values)
	}
	name, _ := chart["name"].(string)
	if err := checkSchema(opts.chart, name, values); err != nil {
		return err
	}
	templates, err := readTemplates(opts.chart, name)
	if err != nil {
		return err
	}
	top := map[string]interface{}{
		"Values":       values,
		"Chart":        chartMetadata(chart),
		"Release":      map[string]interface{}{"Name": opts.release, "Namespace": opts.namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
		"Capabilities": capabilities(opts.apiVersions),
	}
	rendered, err := render(templates, top)
	if err != nil {
		return err
	}
	return print(rendered, opts.notes)
}

func readYAMLMap(file string) (map[string]interface{}, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	values := map[string]interface{}{}
	if err := yaml.Unmarshal(text, &values); err != nil {
		return nil, fmt.Errorf("failed to parse %s: %s", file, err)
	}
	return values, nil
}

// coalesce merges user values over the chart's, as Helm does: maps merge key by key, any
// other value replaces, and a null removes the chart's key.
func coalesce(user, chart map[string]interface{}) map[string]interface{} {
	merged := map[string]interface{}{}
	for key, value := range chart {
		merged[key] = value
	}
	for key, value := range user {
		if value == nil {
			delete(merged, key)
			continue
		}
		userMap, userIsMap := value.(map[string]interface{})
		chartMap, chartIsMap := merged[key].(map[string]interface{})
		if userIsMap && chartIsMap {
			merged[key] = coalesce(userMap, chartMap)
		} else {
			merged[key] = value
		}
	}
	return merged
}

func checkSchema(chartDir, chartName string, values map[string]interface{}) error {
	schema, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %s", err)
	}
	if result.Valid() {
		return nil
	}
	var report strings.Builder
	fmt.Fprintf(&report, "values don't meet the specifications of the schema(s) in the following chart(s):\n%s:\n", chartName)
	for _, problem := range result.Errors() {
		fmt.Fprintf(&report, "- %s\n", problem)
	}
	return errors.New(strings.TrimSuffix(report.String(), "\n"))
}

// readTemplates returns every file under templates/, keyed as Helm names them
// ("<chart>/templates/<file>").
func readTemplates(chartDir, chartName string) (map[string]string, error) {
	templates := map[string]string{}
	root := filepath.Join(chartDir, "templates")
	err := filepath.WalkDir(root, func(file string, entry fs.DirEntry, err error) error {
		if err != nil || entry.IsDir() {
			return err
		}
		text, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		relative, _ := filepath.Rel(root, file)
		templates[path.Join(chartName, "templates", filepath.ToSlash(relative))] = string(text)
		return nil
	})
	return templates, err
}

func chartMetadata(chart map[string]interface{}) map[string]interface{} {
	metadata := map[string]interface{}{}
	for key, value := range chart {
		metadata[strings.ToUpper(key[:1])+key[1:]] = value
	}
	return metadata
}

type apiVersions []string

// Has answers .Capabilities.APIVersions.Has as Helm's does.
func (versions apiVersions) Has(version string) bool {
	for _, v := range versions {
		if v == version {
			return true
		}
	}
	return false
}

func capabilities(extra []string) map[string]interface{} {
	versions := apiVersions(append([]string{"v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "policy/v1"}, extra...))
	return map[string]interface{}{
		"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30", "GitVersion": "v1.30.0"},
		"APIVersions": versions,
	}
}

// funcMap is Helm's: sprig's text functions less env and expandenv, and Helm's own.
func funcMap(root *template.Template, top map[string]interface{}) template.FuncMap {
	functions := sprig.TxtFuncMap()
	delete(functions, "env")
	delete(functions, "expandenv")
	included := map[string]int{}
	functions["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	functions["fromYaml"] = func(text string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(text), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	functions["toJson"] = func(v interface{}) string {
		data, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(data)
	}
	functions["fromJson"] = func(text string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(text), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	functions["include"] = func(name string, data interface{}) (string, error) {
		if included[name] > 1000 {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		included[name]++
		defer func() { included[name]-- }()
		var out strings.Builder
		err := root.ExecuteTemplate(&out, name, data)
		return out.String(), err
	}
	functions["tpl"] = func(text string, data interface{}) (string, error) {
		clone, err := root.Clone()
		if err != nil {
			return "", err
		}
		parsed, err := clone.New("tpl").Parse(text)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %s", text, err)
		}
		var out strings.Builder
		err = parsed.Execute(&out, data)
		return strings.ReplaceAll(out.String(), "<no value>", ""), err
	}
	functions["required"] = func(message string, value interface{}) (interface{}, error) {
		if value == nil {
			return value, errors.New(message)
		}
		if text, ok := value.(string); ok && text == "" {
			return value, errors.New(message)
		}
		return value, nil
	}
	functions["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	return functions
}

func render(templates map[string]string, top map[string]interface{}) (map[string]string, error) {
	names := make([]string, 0, len(templates))
	for name := range templates {
		names = append(names, name)
	}
	sort.Strings(names)
	root := template.New("gotpl").Option("missingkey=zero")
	root.Funcs(funcMap(root, top))
	for _, name := range names {
		if _, err := root.New(name).Parse(templates[name]); err != nil {
			return nil, fmt.Errorf("parse error in %s", strings.TrimPrefix(err.Error(), "template: "))
		}
	}
	rendered := map[string]string{}
	for _, name := range names {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		values := map[string]interface{}{}
		for key, value := range top {
			values[key] = value
		}
		chartName := strings.SplitN(name, "/", 2)[0]
		values["Template"] = map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"}
		var out strings.Builder
		if err := root.ExecuteTemplate(&out, name, values); err != nil {
			return nil, cleanExecError(err)
		}
		rendered[name] = strings.ReplaceAll(out.String(), "<no value>", "")
	}
	return rendered, nil
}

// cleanExecError keeps the message a template's `fail` or `required` gave and where, as Helm
// does ("execution error at (file:line:col): message").
func cleanExecError(err error) error {
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return err
	}
	if index := strings.LastIndex(tokens[2], "error calling "); index >= 0 {
		rest := tokens[2][index+len("error calling "):]
		if colon := strings.Index(rest, ": "); colon >= 0 {
			return fmt.Errorf("execution error at (%s): %s", tokens[1], rest[colon+2:])
		}
	}
	return err
}

// print writes each rendered manifest, refusing one that is not YAML or names no kind (Helm
// refuses those when it sorts the manifests).
func print(rendered map[string]string, notes bool) error {
	names := make([]string, 0, len(rendered))
	for name := range rendered {
		names = append(names, name)
	}
	sort.Strings(names)
	var out bytes.Buffer
	for _, name := range names {
		isNotes := strings.HasSuffix(name, "NOTES.txt")
		if isNotes != notes {
			continue
		}
		if isNotes {
			out.WriteString(rendered[name])
			continue
		}
		for _, document := range strings.Split(rendered[name], "\n---") {
			if strings.TrimSpace(document) == "" {
				continue
			}
			var object map[string]interface{}
			if err := yaml.Unmarshal([]byte(document), &object); err != nil {
				return fmt.Errorf("YAML parse error on %s: %s", name, err)
			}
			if object == nil {
				continue
			}
			if kind, _ := object["kind"].(string); kind == "" {
				return fmt.Errorf("%s: a document without kind", name)
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.Trim(document, "\n"))
		}
	}
	_, err := os.Stdout.Write(out.Bytes())
	return err
}
