"""The official files of MNIST and CIFAR-10, with their published checksums.

sha1 values are those Apache MXNet's dataset loaders publish for the
official files (MNIST's also match torchvision's md5); sizes are in bytes.
"""

from kcnn.data.files import OfficialFile, Source

MNIST = Source(
    folder="mnist",
    # torchvision's mirror of the LeCun files (yann.lecun.com is often unreachable)
    url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    files=(
        OfficialFile("train-images-idx3-ubyte.gz", "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d", 9_912_422),
        OfficialFile("train-labels-idx1-ubyte.gz", "2a80914081dc54586dbdf242f9805a6b8d2a15fc", 28_881),
        OfficialFile("t10k-images-idx3-ubyte.gz", "c3a25af1f52dad7f726cce8cacb138654b760d48", 1_648_877),
        OfficialFile("t10k-labels-idx1-ubyte.gz", "763e7fa3757d93b0cdec073cef058b2004252c17", 4_542),
    ),
)

CIFAR10 = Source(
    folder="cifar10/cifar-10-batches-bin",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    archive_md5="c32a1d4ab5d03f1284b67883e8d87530",
    archive_root="cifar-10-batches-bin",
    files=tuple(
        OfficialFile(f"data_batch_{i}.bin", sha1, 30_730_000)
        for i, sha1 in enumerate(
            [
                "aadd24acce27caa71bf4b10992e9e7b2d74c2540",
                "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795",
                "1dd00a74ab1d17a6e7d73e185b69dbf31242f295",
                "aab85764eb3584312d3c7f65fd2fd016e36a258e",
                "26e2849e66a845b7f1e4614ae70f4889ae604628",
            ],
            start=1,
        )
    )
    + (OfficialFile("test_batch.bin", "67eb016db431130d61cd03c7ad570b013799c88c", 30_730_000),),
)

# The official python version: pickles, opened only after their md5 (the
# published one, also torchvision's) matches, since unpickling runs code.
# `keras.datasets.cifar10` keeps it at ~/.keras/datasets/cifar-10-batches-py.
CIFAR10_PYTHON = Source(
    folder="cifar10/cifar-10-batches-py",
    also_in=("cifar-10-batches-py",),
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    archive_root="cifar-10-batches-py",
    files=tuple(
        OfficialFile(name, md5, algorithm="md5")
        for name, md5 in (
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"),
        )
    ),
)

# The first 1,000 official test images, in the official record format. No
# published checksum covers a partial file: this sha1 is of the file as
# described in ../shared/data/SOURCES.md, whose images are byte-identical to
# a copy of the official test batch.
CIFAR10_PARTIAL_TEST = Source(
    folder="cifar10/partial",
    url="(not downloadable: a partial copy of the official test batch)",
    files=(OfficialFile("test_batch_first1000.bin", "99fb5092fe8004d15ee248abbc35fef4d858bcb0", 3_073_000),),
)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
