"""YAML for configuration files and override values: plain data only, and every problem one line naming the file,
the line and what is wrong. Refused: malformed YAML, a key given twice in one mapping, anchors and aliases (a few
lines of nested aliases can expand to gigabytes), and tags that construct Python objects (`!!python/object`)."""

import re

import yaml


class YAMLError(ValueError):
    """A configuration text that is not plain YAML data; the message names the source and the line."""


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="anchors and aliases (&name / *name) are not allowed", problem_mark=mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {key!r} is given twice in one mapping", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str):
    """Plain data (dict, list, str, numbers, booleans, None) of a YAML text; YAMLError names `source` and the line."""
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = e.problem or e.context or "not valid YAML"
        if "could not determine a constructor" in problem:
            problem = f"tag {problem.split('tag', 1)[1].strip()} is not allowed (plain data only)"
        raise YAMLError(f"{where}: {problem}") from None
    except yaml.YAMLError as e:
        raise YAMLError(f"{source}: not valid YAML ({e})") from None


# As OmegaConf reads YAML: `1e-3` is a float (YAML 1.1 wants `1.0e-3`) and dates stay strings.
_PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9]+(?:_[0-9]+)*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9]+(?:_[0-9]+)*(?:[eE][-+]?[0-9]+)
        |\.[0-9]+(?:_[0-9]+)*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _PlainLoader.yaml_implicit_resolvers.items()
}
