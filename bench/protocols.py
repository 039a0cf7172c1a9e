"""Every evaluation protocol on every method's encoder: a table of test top-1 (top-5), method x protocol.

For each method: a short self-supervised run with the small AMDIM encoder that bench/digits_learning.py uses (so
the methods share one backbone), then one --classifiers run per protocol (protocols.py: amdim, moco, swav, cmc) on
that frozen encoder, each with the protocol's recipe scaled to --cls_epochs (semisup: the encoder fine-tuned on
--label_fraction of the training images); the last row is a randomly initialised encoder under every protocol (the
baseline). Prints the host line and one Markdown table.

    .venv/bin/python bench/protocols.py --folder ../shared/data/cifar10-mini [--ss_epochs 5] [--cls_epochs 10]
    .venv/bin/python bench/protocols.py --methods amdim moco --protocols amdim moco      # a part of the table
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_learning import METHOD_FLAGS, data_flags, train  # noqa: E402
import host  # noqa: E402

PROTOCOLS = ("amdim", "moco", "swav", "cmc", "semisup")


def score(record, protocol):
    """'top-1 (top-5)' of a classifier run's last epoch; AMDIM's protocol reports its linear classifier, as the
    seeds' do theirs (its MLP follows in brackets)."""
    text = f"{record['top1_linear']:.1f} ({record['top5_linear']:.1f})"
    return text + (f" [mlp {record['top1_mlp']:.1f}]" if protocol == "amdim" else "")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", help="an ImageFolder of 32 px images ({train,val}/<class>/*); default: DIGITS")
    p.add_argument("--methods", nargs="+", default=list(METHOD_FLAGS), choices=list(METHOD_FLAGS))
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--ss_epochs", type=int, default=5)
    p.add_argument("--cls_epochs", type=int, default=10)
    p.add_argument("--label_fraction", type=float, default=0.1, help="semisup's labelled fraction")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output_dir", help="where the runs go (default: a temporary folder)")
    args = p.parse_args()
    data = data_flags(args.folder)
    out = args.output_dir or tempfile.mkdtemp(prefix="protocols_")
    seed = ["--seed", str(args.seed)]
    rows = []
    for method in args.methods + ["random encoder"]:
        if method == "random encoder":
            start = []
        else:
            train(data, out, f"{method}_ss", *METHOD_FLAGS[method], "--epochs", str(args.ss_epochs), *seed)
            start = ["--checkpoint_path", os.path.join(out, f"{method}_ss", "amdim_cpt.pth")]
        name = method.replace(" ", "_")
        labels = {"semisup": ["--label_fraction", str(args.label_fraction)]}
        cells = [score(train(data, out, f"{name}_{protocol}", "--classifiers", "--protocol", protocol, *start,
                             *labels.get(protocol, []), "--epochs", str(args.cls_epochs), *seed), protocol)
                 for protocol in args.protocols]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print(host.header()[0])
    print(f"{args.folder or 'DIGITS'}: self-supervised {args.ss_epochs} epochs, classifiers {args.cls_epochs} "
          f"epochs (semisup on {args.label_fraction:g} of the labels), seed {args.seed}; test top-1 (top-5) of the "
          f"linear classifier, %")
    print("| encoder | " + " | ".join(args.protocols) + " |")
    print("|---" * (len(args.protocols) + 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
