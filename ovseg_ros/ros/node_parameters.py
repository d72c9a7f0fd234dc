"""The node's parameters on rclpy: declared with descriptors from :data:`~ovseg_ros.ros.parameters.PARAMETERS`,
and a validation-only check of a set (the node applies what passes)."""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from ovseg_ros.engine.vocabulary import VocabularyError, validate_class_names
from ovseg_ros.ros.parameters import PARAMETERS, PARAMETERS_BY_NAME
from ovseg_ros.ros.topic_names import camera_prefixes

CONFIGURE_TIME_NOTE = "Read on configure; settable only while the node is unconfigured (lifecycle cleanup, set, configure)."

_PARAMETER_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    list: ParameterType.PARAMETER_STRING_ARRAY,
}


def declare_parameters(node: Node) -> None:
    """Declare every parameter with its description, range and choices; raise ValueError for a
    start-up value outside its choices."""
    for spec in PARAMETERS:
        # Not ROS read_only (which refuses every set, so a lifecycle manager could not switch
        # model or device): configure-time parameters are refused by validate_parameters
        # unless the node is unconfigured.
        descriptor = ParameterDescriptor(
            description=spec.description
            + (f" One of: {', '.join(spec.choices)}." if spec.choices else "")
            + (f" {CONFIGURE_TIME_NOTE}" if spec.configure_time else ""),
            additional_constraints=CONFIGURE_TIME_NOTE if spec.configure_time else "",
            type=_PARAMETER_TYPES[type(spec.default)],
        )
        if isinstance(spec.default, float) and spec.min_value is not None:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.min_value), to_value=float(spec.max_value))]
        elif isinstance(spec.default, int) and not isinstance(spec.default, bool) and spec.min_value is not None:
            descriptor.integer_range = [IntegerRange(from_value=int(spec.min_value), to_value=int(spec.max_value), step=1)]
        node.declare_parameter(spec.name, spec.default, descriptor)
        value = node.get_parameter(spec.name).value
        if spec.choices and value not in spec.choices:
            raise ValueError(f"parameter {spec.name} must be one of {', '.join(spec.choices)}, not {value!r}")


def validate_parameters(params: list[Parameter], unconfigured: bool) -> SetParametersResult:
    """Validate only (one refusal refuses the whole set)."""
    for param in params:
        spec = PARAMETERS_BY_NAME.get(param.name)
        if spec is None:  # use_sim_time, qos_overrides...: rclpy's own
            continue
        if spec.configure_time and not unconfigured:
            return SetParametersResult(successful=False, reason=f"{param.name} is read on configure: set it while the node is unconfigured (lifecycle cleanup, set, configure)")
        if spec.choices and param.value not in spec.choices:
            return SetParametersResult(successful=False, reason=f"{param.name} must be one of {', '.join(spec.choices)}, not {param.value!r}")
        try:
            if param.name == "vocabulary":
                validate_class_names(list(param.value))
            elif param.name == "cameras":
                camera_prefixes(list(param.value))
        except (VocabularyError, ValueError) as exc:
            return SetParametersResult(successful=False, reason=str(exc))
    return SetParametersResult(successful=True)
