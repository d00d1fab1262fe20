        %cr{{r}} = arith.constant {{r}} : index
        %col{{r}}u = arith.addi %cbase, %cr{{r}} : index
        %col{{r}} = arith.minui %col{{r}}u, %hlast : index
        %wr{{r}} = arith.addi %eH, %col{{r}} : index
        %wb{{r}} = arith.muli %wr{{r}}, %cW : index
