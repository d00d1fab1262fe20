        %cj{{j}} = arith.constant {{j}} : index
        %a{{j}} = arith.addi %abase, %cj{{j}} : index
        %ac{{j}} = arith.minui %a{{j}}, %flast : index
        %gr{{j}} = arith.addi %eN, %ac{{j}} : index
        %gb{{j}} = arith.muli %gr{{j}}, %cW : index
