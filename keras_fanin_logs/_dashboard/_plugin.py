"""The GRADIENT HEALTH tab: a dynamic TensorBoard plugin.

TensorBoard finds it through the `tensorboard_plugins` entry point, shows its
tab as active when the data provider lists data under the plugin's name (the
layer table GradientHealth writes beside its scalars), and loads `index.js`
into an iframe. The routes answer JSON read through the data provider:

    /runs                        GradientHealth's runs and their layer tables
    /verdicts?run=R              report's table and verdicts for run R
    /matrix?run=R&signal=S       signal S, layers x logged steps
    /layer?run=R&layer=L         every signal of layer L over the steps
    /distribution?run=R&layer=L  layer L's histograms over the steps
                                 (`GradientHealth(histograms=k)`), on the bins
"""

import json
import os
from typing import Any

from tensorboard import errors, plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from keras_fanin_logs._dashboard import _views
from keras_fanin_logs._dashboard._reader import DEFAULT_SAMPLES, Reader
from keras_fanin_logs._signals import PLUGIN_NAME

STATIC = os.path.join(os.path.dirname(__file__), "static")
_TYPES = {".js": "text/javascript", ".css": "text/css"}
# `--samples_per_plugin scalars=0` keeps every point.
_ALL = 2**62
# werkzeug's `Request.application` wraps methods too (the request is their
# last argument), but its annotations take a function of the request alone.
_application: Any = wrappers.Request.application


class GradientHealthPlugin(base_plugin.TBPlugin):
    """GradientHealth's dashboard: depth profile, layer x step heatmap, verdicts.

    Registered with TensorBoard by the `tensorboard_plugins` entry point of
    the `keras-fanin` distribution; imports neither keras nor TensorFlow.

    Args:
        context: TensorBoard's `base_plugin.TBContext`.
    """

    plugin_name = PLUGIN_NAME

    def __init__(self, context):
        hint = (context.sampling_hints or {}).get("scalars")
        samples = DEFAULT_SAMPLES if hint is None else (hint or _ALL)
        self._reader = Reader(context.data_provider, samples)

    def get_plugin_apps(self):
        apps = {
            "/runs": self._serve_runs,
            "/verdicts": self._serve_verdicts,
            "/matrix": self._serve_matrix,
            "/layer": self._serve_layer,
            "/distribution": self._serve_distribution,
        }
        for name in sorted(os.listdir(STATIC)):
            if os.path.splitext(name)[1] in _TYPES:
                apps[f"/{name}"] = self._static(name)
        return apps

    def is_active(self):
        # The data provider's listing of PLUGIN_NAME data decides it.
        return False

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Gradient health"
        )

    def _static(self, name):
        content_type = _TYPES[os.path.splitext(name)[1]]

        @wrappers.Request.application
        def serve(request):
            with open(os.path.join(STATIC, name), "rb") as file:
                content = file.read()
            return http_util.Respond(request, content, content_type)

        return serve

    @staticmethod
    def _where(request):
        return plugin_util.context(request.environ), plugin_util.experiment_id(
            request.environ
        )

    def _run(self, request):
        run = request.args.get("run")
        if not run:
            raise errors.InvalidArgumentError("Missing argument: run")
        ctx, experiment = self._where(request)
        data = self._reader.run(ctx, experiment, run)
        if data is None:
            raise errors.NotFoundError(f"No GradientHealth signals in run {run!r}")
        return run, data

    @staticmethod
    def _json(request, data):
        body = json.dumps(data, allow_nan=False, separators=(",", ":"))
        return http_util.Respond(request, body, "application/json")

    @_application
    def _serve_runs(self, request):
        ctx, experiment = self._where(request)
        runs = self._reader.runs(ctx, experiment)
        return self._json(
            request,
            {
                "runs": [
                    {
                        "run": run,
                        "layers": [
                            [name, activation, kernel]
                            for name, (activation, kernel) in table.items()
                        ],
                    }
                    for run, table in runs.items()
                ],
                "samples": self._reader.samples,
                "thresholds": _views.THRESHOLDS,
            },
        )

    @_application
    def _serve_verdicts(self, request):
        name, run = self._run(request)
        data = run.derived.get("verdicts")
        if data is None:
            data = run.derived["verdicts"] = _views.verdicts(name, run)
        return self._json(request, data)

    @_application
    def _serve_matrix(self, request):
        _, run = self._run(request)
        signal = request.args.get("signal", "grad_norm")
        key = ("matrix", signal)
        data = run.derived.get(key)
        if data is None:
            try:
                data = _views.matrix(run, signal)
            except ValueError as error:
                raise errors.InvalidArgumentError(str(error)) from None
            run.derived[key] = data
        return self._json(request, data)

    def _layer(self, request):
        """`(run name, Run, layer)` of a request naming a run and its layer."""
        name, run = self._run(request)
        layer = request.args.get("layer")
        if layer not in _views.names(run):
            raise errors.NotFoundError(f"No layer {layer!r} in this run")
        return name, run, layer

    @_application
    def _serve_layer(self, request):
        _, run, layer = self._layer(request)
        return self._json(request, _views.layer(run, layer))

    @_application
    def _serve_distribution(self, request):
        name, _, layer = self._layer(request)
        ctx, experiment = self._where(request)
        histograms = self._reader.histograms(ctx, experiment, name, layer)
        return self._json(request, _views.distribution(layer, histograms))
