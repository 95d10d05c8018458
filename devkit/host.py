"""A real ComfyUI server with this pack loaded, for integration tests (no mocks).

    with ComfyServer(models_dir=Path(".dev/models")) as server:
        entry = server.run(api_prompt)          # POST /prompt, wait for /history/<id>
        images = server.output_images(entry)    # the files SaveImage wrote

The server is `$COMFYUI_PATH/main.py` run with this interpreter on the CPU, or another provisioned
host's tree with its own venv's python (`ComfyServer(comfy_host=extra_host("0.30.0"))`). Everything it
writes (user, temp, output and input folders, its database) lives in a private temporary
folder; the pack is loaded from a temporary custom_nodes folder holding one symlink,
`comfyui-tcd-sampling` -> this repository (plus one per entry of `extra_packs`, e.g. a
test-only stand-in pack), named in an --extra-model-paths-config file that also points
ComfyUI's model folders at `models_dir`. HTTP uses only the stdlib.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_DIR_NAME = "comfyui-tcd-sampling"
# Model folder names that the extra-model-paths file maps into models_dir/<name>.
MODEL_FOLDERS = ("checkpoints", "diffusion_models", "loras", "controlnet", "vae", "clip_vision", "ipadapter")
IMPORT_TIMES_HEADER = "Import times for custom nodes:"
LOG_LEVEL_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)?\[[A-Z]+\](?:\x1b\[[0-9;]*m)? ?")

# Servers run in their own session (Ctrl-C does not reach them): stop leftovers at exit.
_RUNNING: weakref.WeakSet[ComfyServer] = weakref.WeakSet()


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=5.0)


class ComfyServerError(RuntimeError):
    """The server failed to start, rejected a prompt, or failed to execute one."""


class PromptRejected(ComfyServerError):
    """POST /prompt refused the prompt (validation): ``answer`` is ComfyUI's error JSON (node_errors included)."""

    def __init__(self, message: str, answer: dict) -> None:
        super().__init__(message)
        self.answer = answer


def dev_dir() -> Path:
    """The provisioned environment (venv, ComfyUI, test models): $TCD_DEV_DIR, as dev/provision.sh, else .dev."""
    return Path(os.environ.get("TCD_DEV_DIR") or REPO_ROOT / ".dev")


def comfyui_path() -> Path:
    """The ComfyUI checkout named by $COMFYUI_PATH. Never skips: a missing host is an error."""
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        raise RuntimeError(
            "COMFYUI_PATH is not set: integration tests need a real ComfyUI. "
            "Run them with dev/test (or `source dev/provision.sh` first)."
        )
    path = Path(value).expanduser().resolve()
    if not (path / "main.py").is_file():
        raise RuntimeError(f"COMFYUI_PATH={value} holds no main.py: it must name a ComfyUI checkout.")
    return path


def comfyui_version(path: Path | str) -> str:
    """The version a ComfyUI tree declares in its comfyui_version.py ("0.3.75"), or "unknown"."""
    try:
        text = (Path(path) / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class Host:
    """A ComfyUI tree and the interpreter that runs it."""

    version: str
    comfy_path: Path
    python: Path


def hosts_dir() -> Path:
    return dev_dir() / "hosts"


def defined_hosts() -> list[str]:
    """The further hosts dev/hosts.sh provisions: one per dev/hosts/comfyui-VERSION.env."""
    return sorted(path.stem.removeprefix("comfyui-") for path in (REPO_ROOT / "dev" / "hosts").glob("comfyui-*.env"))


def extra_host(version: str) -> Host:
    """A host provisioned by dev/hosts.sh in .dev/hosts/comfyui-VERSION. Never skips: a host that is
    not provisioned, or whose tree is another version, is an error that says how to provision it."""
    root = hosts_dir() / f"comfyui-{version}"
    host = Host(version, root / "comfyui", root / "venv" / "bin" / "python")
    how = f"provision it with `TCD_HOSTS={version} dev/test` (or `source dev/provision.sh`)"
    if version not in defined_hosts():
        raise RuntimeError(f"no ComfyUI host {version} is defined in dev/hosts/ (known: {defined_hosts()})")
    if not (root / "venv.stamp").is_file() or not host.python.is_file() or not (host.comfy_path / "main.py").is_file():
        raise RuntimeError(f"ComfyUI host {version} is not provisioned in {root}: {how}")
    found = comfyui_version(host.comfy_path)
    if found != version:
        raise RuntimeError(f"{host.comfy_path} holds ComfyUI {found}, not {version}: delete {root} and {how}")
    return host


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def custom_node_imports(log: str) -> dict[str, bool]:
    """Parses ComfyUI's "Import times for custom nodes:" block: {module path: imported fine}.

    The lines look like `   0.0 seconds: /path/custom_nodes/pack` or, on failure,
    `   0.0 seconds (IMPORT FAILED): /path/custom_nodes/pack`.
    """
    result: dict[str, bool] = {}
    in_block = False
    for line in log.splitlines():
        line = LOG_LEVEL_PREFIX.sub("", line)  # ComfyUI 0.33 starts lines with a coloured "[INFO]"
        if IMPORT_TIMES_HEADER in line:
            in_block = True
            continue
        if not in_block:
            continue
        match = re.match(r"\s*[\d.]+ seconds( \(IMPORT FAILED\))?: (.+)$", line)
        if not match:
            in_block = False
            continue
        result[match.group(2).strip()] = match.group(1) is None
    return result


class ComfyServer:
    """A ComfyUI server subprocess; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        models_dir: Path | str | None = None,
        *,
        pack_dir: Path | str = REPO_ROOT,
        work_dir: Path | str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        extra_packs: Mapping[str, Path | str] | None = None,
        startup_timeout: float = 120.0,
        host: str = "127.0.0.1",
        comfy_host: Host | None = None,
    ) -> None:
        # comfy_host: another provisioned ComfyUI (extra_host), else $COMFYUI_PATH with this interpreter.
        self.comfy_path = comfy_host.comfy_path if comfy_host else comfyui_path()
        self.python = str(comfy_host.python) if comfy_host else sys.executable
        self.version = comfyui_version(self.comfy_path)
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None
        self.pack_dir = Path(pack_dir).resolve()
        self.extra_args = list(extra_args)
        # Further node packs loaded beside this one, {name: folder}: custom_nodes/<name> -> folder.
        self.extra_packs = {name: Path(folder).resolve() for name, folder in (extra_packs or {}).items()}
        self.startup_timeout = startup_timeout
        self.host = host
        self.port: int | None = None
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="comfy-host-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.custom_nodes_dir = self.work_dir / "custom_nodes"
        self.user_dir = self.work_dir / "user"
        self.temp_dir = self.work_dir / "temp"  # --temp-directory; ComfyUI itself uses temp_dir / "temp"
        self.output_dir = self.work_dir / "output"
        self.input_dir = self.work_dir / "input"
        self.log_path = self.work_dir / "server.log"
        self.config_path = self.work_dir / "extra_model_paths.yaml"
        self.client_id = uuid.uuid4().hex
        self._process: subprocess.Popen | None = None
        self._log_file = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise ComfyServerError("the server is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def comfy_temp_dir(self) -> Path:
        """ComfyUI's temp folder (PreviewImage files): it appends "temp" to --temp-directory."""
        return self.temp_dir / "temp"

    @property
    def pack_link(self) -> Path:
        """The path ComfyUI imports the pack from (a symlink to pack_dir)."""
        return self.custom_nodes_dir / PACK_DIR_NAME

    def _write_layout(self) -> None:
        for folder in (self.custom_nodes_dir, self.user_dir, self.temp_dir, self.output_dir, self.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.pack_link.is_symlink():
            self.pack_link.symlink_to(self.pack_dir, target_is_directory=True)
        for name, folder in self.extra_packs.items():
            link = self.custom_nodes_dir / name
            if not link.is_symlink():
                link.symlink_to(folder, target_is_directory=True)
        lines = ["tcd_test_host:", f"    custom_nodes: {json.dumps(str(self.custom_nodes_dir))}"]
        if self.models_dir is not None:
            lines += [f"    {name}: {json.dumps(str(self.models_dir / name))}" for name in MODEL_FOLDERS]
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [
            self.python,
            str(self.comfy_path / "main.py"),
            "--cpu",
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--user-directory",
            str(self.user_dir),
            "--temp-directory",
            str(self.temp_dir),
            "--output-directory",
            str(self.output_dir),
            "--input-directory",
            str(self.input_dir),
            "--database-url",
            "sqlite:///:memory:",
            "--extra-model-paths-config",
            str(self.config_path),
            *self.extra_args,
        ]

    def start(self) -> ComfyServer:
        if self._process is not None:
            return self
        self._write_layout()
        self.port = free_port(self.host)
        env = dict(os.environ, PYTHONUNBUFFERED="1", COMFYUI_PATH=str(self.comfy_path))
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        self._process = subprocess.Popen(
            self.command(),
            cwd=self.comfy_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive("while starting")
            try:
                self.object_info()
                return
            except (urllib.error.URLError, ConnectionError, OSError, ComfyServerError) as exc:
                last_error = exc
            time.sleep(0.25)
        raise ComfyServerError(
            f"ComfyUI did not answer GET /object_info within {self.startup_timeout:.0f} s "
            f"(last error: {last_error!r})\n{self.log_tail()}"
        )

    def _check_alive(self, doing: str) -> None:
        if self._process is None:
            raise ComfyServerError("the server is not started")
        code = self._process.poll()
        if code is not None:
            raise ComfyServerError(f"ComfyUI exited with code {code} {doing}\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Stops the server (SIGTERM, then SIGKILL); returns its exit code."""
        process, self._process = self._process, None
        _RUNNING.discard(self)
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=timeout)
            code = process.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def cleanup(self) -> None:
        """Stops the server and deletes its work folder if this object created it."""
        self.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # --- logs -----------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the server has printed so far (stdout and stderr together)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "---- ComfyUI log (last {} lines) ----\n{}".format(len(tail), "\n".join(tail))

    def custom_node_imports(self) -> dict[str, bool]:
        return custom_node_imports(self.log_text())

    # --- HTTP -----------------------------------------------------------------------------

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 60.0) -> Any:
        """JSON request to the server; raises urllib.error.HTTPError on 4xx/5xx."""
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get_json(self, path: str, timeout: float = 60.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post_json(self, path: str, payload: Any, timeout: float = 60.0) -> Any:
        return self.request("POST", path, payload, timeout=timeout)

    def object_info(self, node_class: str | None = None) -> dict:
        """GET /object_info (all nodes) or /object_info/<node_class> (that node's entry)."""
        if node_class is None:
            return self.get_json("/object_info")
        info = self.get_json("/object_info/" + urllib.parse.quote(node_class, safe=""))
        if node_class not in info:
            raise ComfyServerError(f"ComfyUI knows no node {node_class!r}")
        return info[node_class]

    def queue(self, api_prompt: dict) -> str:
        """POST /prompt; returns the prompt id. Raises ComfyServerError with ComfyUI's
        error JSON (node_errors included) when the prompt fails validation."""
        self._check_alive("before queueing a prompt")
        payload = {"prompt": api_prompt, "client_id": self.client_id}
        try:
            answer = self.post_json("/prompt", payload)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                answer = json.loads(body)
            except ValueError:
                answer = None
            message = f"ComfyUI rejected the prompt (HTTP {exc.code}):\n"
            if isinstance(answer, dict):
                raise PromptRejected(f"{message}{json.dumps(answer, indent=1)}\n{self.log_tail()}", answer) from None
            raise ComfyServerError(f"{message}{body}\n{self.log_tail()}") from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        """The /history entry of a prompt, or None while it is queued or running."""
        return self.get_json("/history/" + urllib.parse.quote(prompt_id, safe="")).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.1) -> dict:
        """Polls /history/<prompt_id> until the prompt finished; raises if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            self._check_alive(f"while running prompt {prompt_id}")
            if time.monotonic() > deadline:
                raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(poll)
        status = entry.get("status", {})
        if status.get("status_str") != "success" or not status.get("completed"):
            messages = json.dumps(status.get("messages", []), indent=1)
            raise ComfyServerError(
                f"prompt {prompt_id} failed (status {status.get('status_str')!r}):\n{messages}\n{self.log_tail()}"
            )
        return entry

    def run(self, api_prompt: dict, timeout: float = 300.0) -> dict:
        """Queues an API-format prompt and waits for it: returns its /history entry.

        ComfyUI serves an identical prompt from its cache without running anything:
        change a seed or an input to force execution.
        """
        return self.wait(self.queue(api_prompt), timeout=timeout)

    # --- outputs --------------------------------------------------------------------------

    def output_images(self, history_entry: dict, node_id: str | None = None) -> list[Path]:
        """Files of the images in a history entry (SaveImage: output, PreviewImage: temp)."""
        folders = {"output": self.output_dir, "temp": self.comfy_temp_dir, "input": self.input_dir}
        paths = []
        for nid, output in history_entry.get("outputs", {}).items():
            if node_id is not None and nid != str(node_id):
                continue
            for image in output.get("images", []):
                folder = folders[image.get("type", "output")]
                paths.append(folder / image.get("subfolder", "") / image["filename"])
        return paths


def txt2img_prompt(
    ckpt_name: str,
    *,
    seed: int = 0,
    steps: int = 2,
    cfg: float = 1.0,
    sampler_name: str = "euler",
    scheduler: str = "simple",
    width: int = 64,
    height: int = 64,
    positive: str = "a paper cut fox",
    negative: str = "",
    filename_prefix: str = "tcd-test",
) -> dict:
    """API-format graph: CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage ->
    KSampler -> VAEDecode -> SaveImage. Node ids are names ("ckpt", "positive", "negative",
    "latent", "sampler", "decode", "save") so that tests can rewire it, e.g.
    `prompt["sampler"]["inputs"]["model"] = ["lora", 0]`."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["ckpt", 1]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "sampler": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["ckpt", 0],
                "positive": ["positive", 0],
                "negative": ["negative", 0],
                "latent_image": ["latent", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": filename_prefix}},
    }
