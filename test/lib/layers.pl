#!/usr/bin/perl
# test/lib/layers.pl - check that src/ keeps its layers
#
# The layer map in src/pg_cqrs.h lists every .c file of src/, top to
# bottom; a file may call only the files listed below it.  This script
# finds, for every exported function (a definition "CqrsName(" at the start
# of a line in src/*.c), the file defining it, and reports every call that
# goes up or sideways in the map, every file the map does not list, every
# name the map lists that does not exist, and every .c file over the size
# limit that does not say at its top why it needs to be that long.
#
# Usage: perl test/lib/layers.pl [SRCDIR]     (exit status 1 on a problem)

use strict;
use warnings;

my $src = shift // 'src';
my $max_lines = 900;
my @problems;

# The map: the lines between "Layers" and the next blank comment line.
open(my $h, '<', "$src/pg_cqrs.h") or die "cannot open $src/pg_cqrs.h: $!\n";
my (@order, $in_map);
while (<$h>)
{
	if (/^ \* Layers\b/) { $in_map = 1; next; }
	next unless $in_map;
	last if /^ \*\s*$/ && @order;
	push @order, $1 if /^ \*\s+(\w+\.c)\s/;
}
close $h;
die "no layer map found in $src/pg_cqrs.h\n" unless @order;
my %rank;
@rank{@order} = (0 .. $#order);

# Who defines what.
my (%text, %defined_in);
for my $path (sort glob("$src/*.c"))
{
	my ($file) = $path =~ m{([^/]+)$};
	local $/;
	open(my $fh, '<', $path) or die "cannot open $path: $!\n";
	$text{$file} = <$fh>;
	close $fh;
	$defined_in{$1} = $file while $text{$file} =~ /^(Cqrs\w+)\(/mg;
	push @problems, "$file is not in the layer map of pg_cqrs.h"
		unless exists $rank{$file};
}
exists $text{$_} or push @problems, "the layer map lists $_, which does not exist"
	for @order;

# Calls must go down the map.
for my $file (sort keys %text)
{
	next unless exists $rank{$file};
	my %seen;
	# comments do not call anything
	(my $code = $text{$file}) =~ s{/\*.*?\*/}{}gs;
	while ($code =~ /\b(Cqrs\w+)\s*\(/g)
	{
		my $callee = $defined_in{$1} // next;
		next if $callee eq $file || $seen{"$callee $1"}++;
		next unless exists $rank{$callee};
		push @problems, "$file calls $1 of $callee, which is not below it"
			if $rank{$callee} <= $rank{$file};
	}
}

# Size.
for my $file (sort keys %text)
{
	my $lines = () = $text{$file} =~ /\n/g;
	next if $lines <= $max_lines;
	my ($head) = $text{$file} =~ m{\A(/\*.*?\*/)}s;
	push @problems, "$file has $lines lines and its header does not say why (a line starting \"Size.\")"
		unless defined $head && $head =~ /^ \* Size\./m;
}

if (@problems)
{
	print "$_\n" for @problems;
	exit 1;
}
printf "%d files, every call goes down the layer map\n", scalar @order;
exit 0;
