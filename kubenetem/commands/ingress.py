"""`kubenetem ingress render|route|serve`: the Ingress controller from the command line.

render  nginx.conf (and its certificate files) from manifests; `--check` runs `nginx -t`.
route   what that config does with one request (text or JSON).
serve   a real nginx on the given address, reloaded whenever the files change.

A rejected Ingress is reported on stderr and left out; the others are served
(`--strict` makes any rejection an error: exit 2, nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
from pathlib import Path

from ingress.controller import Controller, SyncResult
from ingress.model import ControllerConfig, IngressModel
from ingress.nginx_process import NginxProcess, check, default_certificate
from ingress.render import Renderer, RenderOptions
from ingress.router import Request, Router
from netem.errors import UsageError

from .common import add_files, load, write_output


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingress", help="the nginx Ingress controller: render nginx.conf, route a request, serve")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    r = verbs.add_parser("render", help="nginx.conf from Ingresses, Services and Secrets")
    add_files(r)
    r.add_argument("-o", "--output", help="write nginx.conf here (certificates go to ssl/ beside it)")
    r.add_argument("--check", action="store_true", help="run `nginx -t` on the result")
    _common(r)
    r.set_defaults(handler=run_render)

    q = verbs.add_parser("route", help="what the rendered config does with one request")
    add_files(q)
    q.add_argument("--url", required=True, help="http://HOST/PATH or https://HOST/PATH")
    q.add_argument("--header", action="append", default=[], metavar="K:V", help="a request header; repeatable")
    q.add_argument("--cookie", action="append", default=[], metavar="K=V", help="a cookie; repeatable")
    q.add_argument("--src", default="203.0.113.10", help="the client address (default 203.0.113.10)")
    q.add_argument("--content-length", type=int, default=0, help="request body size, for proxy-body-size")
    q.add_argument("--seed", type=int, default=0, help="seed for canary weights")
    q.add_argument("-o", "--output", choices=("text", "json"), default="text")
    _common(q)
    q.set_defaults(handler=run_route)

    s = verbs.add_parser("serve", help="run nginx with the controller loop, reloading when the files change")
    add_files(s)
    s.add_argument("--listen", required=True, metavar="ADDR:PORT", help="http address, e.g. 127.0.0.1:8080")
    s.add_argument("--listen-https", metavar="ADDR:PORT", help="https address (default: http port + 363)")
    s.add_argument("--dir", help="nginx's prefix directory (default: a temporary one)")
    _common(s)
    s.set_defaults(handler=run_serve)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controller", default="k8s.io/ingress-nginx", help="the IngressClass controller we are")
    p.add_argument("--ingress-class", default="nginx", help="the kubernetes.io/ingress.class value we take")
    p.add_argument("--watch-ingress-without-class", action="store_true")
    p.add_argument(
        "--ingress-nginx-locations",
        action="store_true",
        help="render ingress-nginx's locations as they are, 301s that break the spec included",
    )
    p.add_argument("--strict", action="store_true", help="a rejected Ingress is an error (exit 2)")


def _config(args: argparse.Namespace) -> ControllerConfig:
    return ControllerConfig(
        controller=args.controller,
        ingress_class=args.ingress_class,
        watch_without_class=args.watch_ingress_without_class,
        keep_spec=not args.ingress_nginx_locations,
    )


def _model(args: argparse.Namespace) -> IngressModel:
    model = IngressModel.from_cluster(load(args), _config(args))
    errors = model.error_list()
    if errors and args.strict:
        from netem.errors import ValidationErrors

        raise ValidationErrors(errors)
    for e in errors:
        print(f"kubenetem: rejected: {e.line()}", file=sys.stderr)
    for w in model.warnings:
        print(f"kubenetem: warning: {w}", file=sys.stderr)
    return model


def run_render(args: argparse.Namespace) -> int:
    model = _model(args)
    renderer = Renderer()
    if args.output:
        rendered = renderer.render(model, default_certificate())
        directory = Path(os.path.dirname(os.path.abspath(args.output)))
        if not directory.is_dir():
            raise UsageError(f"cannot write {args.output}: no such directory {directory}")
        if args.check:
            check(rendered)
        for rel, content in rendered.files.items():
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            write_output(str(directory / rel), content)
            os.chmod(directory / rel, 0o600)
        write_output(args.output, rendered.text)
    else:
        rendered = renderer.render(model)
        if args.check:
            check(rendered)
        sys.stdout.write(rendered.text)
    if args.check:
        print("kubenetem: nginx -t: the configuration is ok", file=sys.stderr)
    return 0


def run_route(args: argparse.Namespace) -> int:
    model = _model(args)
    headers: dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header must be NAME:VALUE (got {h!r})")
        headers[name.strip()] = value.strip()
    cookies: dict[str, str] = {}
    for c in args.cookie:
        name, sep, value = c.partition("=")
        if not sep or not name:
            raise UsageError(f"--cookie must be NAME=VALUE (got {c!r})")
        cookies[name] = value
    try:
        request = Request.from_url(args.url, headers, cookies, args.src, args.content_length)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from None
    decision = Router(model, random.Random(args.seed)).route(request)
    if args.output == "json":
        print(json.dumps(decision.to_json(), indent=2, sort_keys=True))
    else:
        print(decision.to_text())
    return 0


def _address(text: str, flag: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"{flag} must be ADDRESS:PORT (got {text!r})")
    return text


def run_serve(args: argparse.Namespace) -> int:
    listen = _address(args.listen, "--listen")
    host, _, port = listen.rpartition(":")
    https = _address(args.listen_https, "--listen-https") if args.listen_https else f"{host}:{int(port) + 363}"
    files = [f for group in args.files for f in group.split(",") if f]
    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="kn-ingress-")
    directory = Path(args.dir or (tmp.name if tmp else "."))
    options = RenderOptions(listen_http=(listen,), listen_https=(https,), error_log="error.log")
    nginx = NginxProcess(directory)
    controller = Controller(directory, files, options, _config(args), nginx)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def report(result: SyncResult) -> None:
        for line in result.problems if result.changed else []:
            print(f"kubenetem: {line}", file=sys.stderr)
        print(f"kubenetem: {result.summary()}", file=sys.stderr)

    print(f"kubenetem: serving http://{listen} and https://{https} from {directory}", file=sys.stderr)
    try:
        controller.run(stop, report)
    except KeyboardInterrupt:
        pass
    finally:
        nginx.stop()
        if tmp is not None:
            tmp.cleanup()
    return 0
