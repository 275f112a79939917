"""Factories named in a suite file: `"package.module:callable"` with keyword arguments.

A suite may name, beside the built-in names, a model, dataset, optimiser, schedule or run function
of the user's own code. `resolve` imports and checks one when the file is loaded, so a factory that
does not import, is not callable, or gets an argument it does not take is refused before any
training, with one line naming the problem (the suite loader adds the file and the key).

`check_arguments` compares the suite's keyword arguments with `inspect.signature`: an argument the
callable does not take, or a required one that neither the suite nor lipbench passes, is refused
with the callable's own parameter names (and a did-you-mean). lipbench passes some arguments itself
(a model factory gets `input_shape` and `num_classes` when it takes them; see each kind's
`SUPPLIED`); `call` passes exactly those the callable declares.

This module imports no torch: the schema calls it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lipbench import plugins
from lipbench.errors import LipbenchError

#: A factory reference: dotted module path, a colon, a dotted attribute path.
SEPARATOR = ":"

#: Arguments lipbench passes to a factory of each kind when its signature takes them (by keyword),
#: and how many positional arguments go first (a model's parameters to an optimiser, ...).
SUPPLIED: dict[str, tuple[int, tuple[str, ...]]] = {
    "model": (0, ("input_shape", "num_classes")),
    "dataset": (0, ("root",)),
    "optimizer": (1, ("lr", "weight_decay")),
    "schedule": (1, ("total_steps",)),
    "run": (2, ()),
}


class FactoryError(ValueError):
    """A factory that cannot be used; the message is one line, without the file and key."""


def is_reference(name: str) -> bool:
    """True when `name` names a callable of the user's code ("package.module:callable")."""
    return SEPARATOR in name


def resolve(reference: str) -> Callable[..., Any]:
    """Import `reference` ("package.module:callable") and return the callable."""
    module_name, sep, attr = reference.partition(SEPARATOR)
    if not sep or not module_name.strip() or not attr.strip():
        raise FactoryError(f"{reference!r} is not of the form 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise FactoryError(
                f"{reference!r} does not import: no module named {e.name!r}; install its package "
                "(pip install -e <its folder>) or put it on PYTHONPATH"
            ) from None
        raise FactoryError(f"{reference!r} does not import: importing {module_name} raised {_one_line(e)}") from None
    except Exception as e:  # the user's module failed while importing: say what it raised
        raise FactoryError(f"{reference!r} does not import: importing {module_name} raised {_one_line(e)}") from None
    obj: Any = module
    done = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise FactoryError(f"{reference!r}: {done} has no attribute {part!r}{hint}")
        obj, done = getattr(obj, part), f"{done}.{part}"
    if not callable(obj):
        raise FactoryError(f"{reference!r} is a {type(obj).__name__}, not callable; name a function or a class")
    return obj


def check_arguments(reference: str, factory: Callable[..., Any], kind: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments `factory` does not take, and required ones nobody passes."""
    positional, supplied = SUPPLIED[kind]
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check against
        return
    params = list(signature.parameters.values())
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    passed_positionally = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:positional]
    by_keyword = [p for p in params if p not in passed_positionally and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    names = [p.name for p in by_keyword if p.kind is not p.POSITIONAL_ONLY]
    takes = ", ".join(names) or "no keyword arguments"
    for key in kwargs:
        if key in supplied and key in names:
            raise FactoryError(f"{reference} gets {key!r} from lipbench; remove it from kwargs")
        if key not in names and not takes_any:
            raise FactoryError(f"{reference} takes no argument {key!r}{did_you_mean(key, names)}; it takes: {takes}")
    takes_positional = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(passed_positionally) < positional and not takes_positional:
        raise FactoryError(f"{reference} must take {positional} positional argument(s) ({_POSITIONAL[kind]})")
    missing = [
        p.name
        for p in by_keyword
        if p.default is p.empty and p.name not in kwargs and p.name not in supplied and p.kind is not p.POSITIONAL_ONLY
    ]
    if missing:
        raise FactoryError(f"{reference} needs argument {missing[0]!r}; give it under kwargs")


_POSITIONAL = {
    "model": "",
    "dataset": "",
    "optimizer": "the model's parameters",
    "schedule": "the optimiser",
    "run": "the run context and the recorder",
}


def call(factory: Callable[..., Any], kind: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], **given: Any) -> Any:
    """Call `factory(*args, **kwargs)` plus those of `given` (lipbench's values) that its signature takes."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in given.items() if k in SUPPLIED[kind][1] and (k in params or takes_any)}
    return factory(*args, **extra, **kwargs)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or nothing: the one hint every message gives."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def reference_for(kind: str, name: str, builtins: tuple[str, ...]) -> str | None:
    """The "package.module:callable" that `name` stands for, or None for a built-in name.

    Raises FactoryError for a name that is neither built in, nor a plugin's, nor a reference.
    """
    if name in builtins:
        return None
    if is_reference(name):
        return name
    target = plugins.target(kind, name)
    if target is None:
        allowed = [*builtins, *plugins.names(kind)]
        quoted = [repr(a) for a in allowed]
        listed = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        should = f"{listed}, another installed plugin's {kind}" if quoted else f"an installed plugin's {kind}"
        raise FactoryError(
            f"{name!r} is not allowed{did_you_mean(name, allowed)}; should be {should} name, "
            "or 'package.module:callable'"
        )
    return target


def validate(kind: str, name: str, kwargs: Mapping[str, Any], builtins: tuple[str, ...]) -> None:
    """Load-time check of a named callable and its keyword arguments (see the module docstring)."""
    reference = reference_for(kind, name, builtins)
    if reference is None:
        if kwargs:
            raise FactoryError(f"kwargs are for a factory or plugin {kind}; the built-in {name!r} takes none")
        return
    check_arguments(reference, resolve(reference), kind, kwargs)


def build_model(reference: str, kwargs: Mapping[str, Any], data: Any, init_seed: int) -> Any:
    """A factory model, built on the CPU with the global generator seeded from `init_seed` alone.

    Module constructors draw their initial weights from torch's global CPU generator; it is forked
    around the call, so the init seed alone fixes the weights and no other stream is disturbed.
    """
    import torch

    with init_rng(init_seed):
        model = call(
            resolve(reference),
            "model",
            (),
            kwargs,
            input_shape=tuple(int(d) for d in data.x_train.shape[1:]),
            num_classes=data.num_classes,
        )
    if not isinstance(model, torch.nn.Module):
        raise UserCodeError(f"model {reference} returned a {type(model).__name__}, not a torch.nn.Module")
    return model.to("cpu")


def build_dataset(reference: str, kwargs: Mapping[str, Any], root: Any, train_size: int | None, test_size: int | None):
    """A factory dataset as a `lipbench.torch.data.Dataset`: the factory returns one, or the four tensors
    (x_train, y_train, x_test, y_test)."""
    import torch  # a dataset factory runs only where claims train

    from lipbench.torch.data import Dataset

    made = call(resolve(reference), "dataset", (), kwargs, root=root)
    if isinstance(made, Dataset):
        data = made
    elif isinstance(made, (tuple, list)) and len(made) == 4:
        x_train, y_train, x_test, y_test = (torch.as_tensor(t) for t in made)
        classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
        data = Dataset(reference, x_train.float(), y_train.long(), x_test.float(), y_test.long(), classes)
    else:
        raise UserCodeError(
            f"dataset {reference} returned a {type(made).__name__}; return a lipbench.torch.data.Dataset or "
            "the tuple (x_train, y_train, x_test, y_test)"
        )
    for n, split in ((train_size, "train"), (test_size, "test")):
        if n is not None and n > len(getattr(data, f"x_{split}")):
            raise UserCodeError(f"dataset {reference}: {split}_size is {n} but the {split} split has fewer samples")
    return Dataset(
        data.name,
        data.x_train[:train_size],
        data.y_train[:train_size],
        data.x_test[:test_size],
        data.y_test[:test_size],
        data.num_classes,
    )


@contextlib.contextmanager
def init_rng(init_seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded from `init_seed` alone inside the block, restored after it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(init_seed)
        yield


class UserCodeError(LipbenchError):
    """A problem of the user's factory or run function, found where it runs (one line, no traceback)."""
